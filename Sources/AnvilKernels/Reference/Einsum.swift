import AnvilCore

/// Reference kernel for Einsum: parses the equation (with "..." broadcasting and
/// implicit output), then sums products over every label not in the output.
public enum EinsumKernel {
    public static func run(_ equation: String, _ inputs: [Tensor]) throws -> Tensor {
        func fail(_ r: String) -> AnvilError { .invalidTensor(name: "Einsum", reason: "equation '\(equation)': \(r)") }
        let eq = equation.filter { $0 != " " }
        let parts = eq.components(separatedBy: "->")
        guard parts.count <= 2 else { throw fail("more than one '->'") }
        let lhs = parts[0].components(separatedBy: ",")
        guard lhs.count == inputs.count else { throw fail("\(lhs.count) operands named, \(inputs.count) given") }
        // Labels: letters map to their scalar value; ellipsis axes to negative ids by right alignment.
        var ellipsisRank = 0
        var operandLabels: [[Int]] = []
        for (term, t) in zip(lhs, inputs) {
            let hasEllipsis = term.contains("...")
            let letters = term.replacingOccurrences(of: "...", with: "")
            guard letters.allSatisfy({ $0.isLetter }) else { throw fail("invalid term '\(term)'") }
            let broadcastAxes = t.rank - letters.count
            guard broadcastAxes >= 0, hasEllipsis || broadcastAxes == 0 else { throw fail("term '\(term)' does not fit operand of rank \(t.rank)") }
            ellipsisRank = max(ellipsisRank, broadcastAxes)
            var labels: [Int] = []
            let pieces = term.components(separatedBy: "...")
            labels += pieces[0].unicodeScalars.map { Int($0.value) }
            if hasEllipsis {
                labels += (0..<broadcastAxes).map { -(broadcastAxes - $0) }
                labels += pieces[1].unicodeScalars.map { Int($0.value) }
            }
            operandLabels.append(labels)
        }
        var sizes: [Int: Int] = [:]
        for (labels, t) in zip(operandLabels, inputs) {
            for (axis, l) in labels.enumerated() {
                let d = t.shape[axis]
                if let s = sizes[l], s != d {
                    if s == 1 && l < 0 { sizes[l] = d } else if !(d == 1 && l < 0) { throw fail("label size mismatch: \(s) vs \(d)") }
                } else if sizes[l] == nil { sizes[l] = d }
            }
        }
        let ellipsisLabels = (0..<ellipsisRank).map { -(ellipsisRank - $0) }
        var output: [Int]
        if parts.count == 2 {
            let rhs = parts[1]
            let pieces = rhs.components(separatedBy: "...")
            output = pieces[0].unicodeScalars.map { Int($0.value) }
            if pieces.count == 2 { output += ellipsisLabels + pieces[1].unicodeScalars.map { Int($0.value) } }
            for l in output where sizes[l] == nil && l >= 0 { throw fail("output label '\(UnicodeScalar(l).map(String.init) ?? "?")' is not in any operand") }
        } else {
            var counts: [Int: Int] = [:]
            for labels in operandLabels { for l in labels where l >= 0 { counts[l, default: 0] += 1 } }
            output = ellipsisLabels + counts.filter { $0.value == 1 }.map(\.key).sorted()
        }
        let summed = Set(sizes.keys).subtracting(output).sorted()
        let all = output + summed
        let dims = all.map { sizes[$0] ?? 1 }
        // Per operand, its stride for each label position in `all` (0 where absent or broadcast).
        let strides: [[Int]] = zip(operandLabels, inputs).map { labels, t in
            let s = ShapeMath.strides(t.shape)
            return all.map { l in
                var total = 0
                for (axis, x) in labels.enumerated() where x == l && t.shape[axis] != 1 { total += s[axis] }
                return total
            }
        }
        let values = inputs.map { $0.doubles }
        let outShape = output.map { sizes[$0] ?? 1 }
        let outCount = outShape.reduce(1, *), sumCount = summed.map { sizes[$0]! }.reduce(1, *)
        var out = [Double](repeating: 0, count: outCount)
        guard outCount > 0 else { return try Tensor(inputs[0].dataType, shape: outShape, doubles: out) }
        var position = [Int](repeating: 0, count: all.count)
        for o in 0..<outCount {
            var acc = 0.0
            for s in 0..<sumCount {
                // Decode (o, s) into label positions.
                var rem = o
                for i in stride(from: output.count - 1, through: 0, by: -1) { position[i] = rem % dims[i]; rem /= dims[i] }
                rem = s
                for i in stride(from: all.count - 1, through: output.count, by: -1) { position[i] = rem % dims[i]; rem /= dims[i] }
                var product = 1.0
                for k in 0..<inputs.count {
                    var offset = 0
                    for i in 0..<all.count { offset += position[i] * strides[k][i] }
                    product *= values[k][offset]
                }
                acc += product
            }
            out[o] = acc
        }
        if inputs[0].dataType.isInteger {
            return try Tensor(inputs[0].dataType, shape: outShape, int64s: out.map { Tensor.int64(fromDouble: $0) })
        }
        return try Tensor(inputs[0].dataType, shape: outShape, doubles: out)
    }
}
