import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// Recognizes normalizations written out as reductions:
/// - LayerNormalization: d = x − mean(x); d / √(mean(d²) + ε), over trailing axes;
/// - RMSNormalization: x / √(mean(x²) + ε);
/// (division or multiplication by the reciprocal, d² as Pow or Mul), and then
/// absorbs a following constant Mul (scale) and, for LayerNormalization, Add (bias).
/// LayerNormalization is standard from opset 17, RMSNormalization from 23; earlier
/// models get Anvil's op of the same semantics.
public struct RecognizeNormalizations: Pass {
    public let name = "recognize-normalizations"
    public let summary = "recognize decomposed LayerNormalization and RMSNormalization and absorb their scale and bias"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver(Self.rules).run(context) }

    static let rules: [RewriteRule] = [
        RewriteRule("normalization", roots: ["Div", "Mul"]) { node, ctx in
            guard node.domain.isEmpty, node.inputs.count == 2 else { return nil }
            // numerator / S, or numerator · Reciprocal(S).
            var candidates: [(numerator: String, root: String, extra: [Node])] = []
            if node.opType == "Div" { candidates.append((node.inputs[0], node.inputs[1], [])) }
            if node.opType == "Mul" {
                for side in [0, 1] {
                    if let r = ctx.interior(node.inputs[side], "Reciprocal", readBy: node) { candidates.append((node.inputs[1 - side], r.inputs[0], [r])) }
                }
            }
            for (numerator, denominator, extra) in candidates {
                let reader = extra.first ?? node
                guard let sqrt = ctx.interior(denominator, "Sqrt", readBy: reader), let add = ctx.interior(sqrt.inputs[0], "Add", readBy: sqrt),
                      add.inputs.count == 2 else { continue }
                let (varianceValue, epsilon): (String, Double?) = ctx.scalar(add.inputs[1]) != nil ? (add.inputs[0], ctx.scalar(add.inputs[1])) : (add.inputs[1], ctx.scalar(add.inputs[0]))
                guard let epsilon, let meanOfSquares = ctx.interior(varianceValue, "ReduceMean", readBy: add),
                      let square = squareNode(meanOfSquares.inputs[0], of: numerator, reader: meanOfSquares, ctx),
                      let rank = ctx.type(numerator).rank, let axis = trailingAxis(meanOfSquares, rank: rank, ctx) else { continue }
                // LayerNorm: the numerator is x − mean(x) over the same axes, read only by the square and the division.
                if let sub = ctx.producer(numerator), sub.opType == "Sub", sub.domain.isEmpty,
                   let mean = ctx.interior(sub.inputs[1], "ReduceMean", readBy: sub), mean.inputs[0] == sub.inputs[0],
                   trailingAxis(mean, rank: rank, ctx) == axis, ctx.uses.useCount(numerator) == 2 {
                    let x = sub.inputs[0]
                    guard let shape = normalizedShape(ctx.type(x), from: axis), let element = ctx.type(x).elementType, element.isFloatingPoint else { continue }
                    let ones = ctx.graph.freshName("\(node.name)_scale")
                    let matched = [mean, sub, square, meanOfSquares, add, sqrt] + extra + [node]
                    guard let ln = recognized("LayerNormalization", name: node.name, inputs: [x, ones], outputs: node.outputs,
                                              attributes: ["axis": .int(Int64(axis - rank)), "epsilon": .float(Float(epsilon))], from: matched, ctx) else { return nil }
                    return Patch(statistic: "LayerNormalization recognized", remove: matched, add: [ln],
                                 initializers: [(ones, try Tensor(element, shape: Array(shape), doubles: Array(repeating: 1, count: shape.reduce(1, *))))])
                }
                // RMSNorm: the numerator is x itself.
                if ctx.producer(numerator)?.opType != "Sub" {
                    guard let shape = normalizedShape(ctx.type(numerator), from: axis), let element = ctx.type(numerator).elementType, element.isFloatingPoint else { continue }
                    let ones = ctx.graph.freshName("\(node.name)_scale")
                    let matched = [square, meanOfSquares, add, sqrt] + extra + [node]
                    guard let rms = recognized("RMSNormalization", name: node.name, inputs: [numerator, ones], outputs: node.outputs,
                                               attributes: ["axis": .int(Int64(axis - rank)), "epsilon": .float(Float(epsilon))], from: matched, ctx) else { return nil }
                    return Patch(statistic: "RMSNormalization recognized", remove: matched, add: [rms],
                                 initializers: [(ones, try Tensor(element, shape: Array(shape), doubles: Array(repeating: 1, count: shape.reduce(1, *))))])
                }
            }
            return nil
        },
        RewriteRule("absorb scale and bias", roots: ["Mul", "Add"]) { node, ctx in
            guard node.domain.isEmpty, node.inputs.count == 2 else { return nil }
            for side in [0, 1] {
                guard let norm = ctx.producer(node.inputs[side]), norm.opType == "LayerNormalization" || norm.opType == "RMSNormalization",
                      norm.domain.isEmpty || norm.domain == anvilDomain, ctx.uses.soleConsumer(norm.outputs[0]) === node,
                      norm.outputs.filter({ !$0.isEmpty }).count == 1,
                      let c = ctx.constant(node.inputs[1 - side]), let scale = ctx.constant(norm.inputs[1]), c.dataType == scale.dataType,
                      sameType(ctx.type(norm.outputs[0]), ctx.type(node.outputs[0])) else { continue }
                let normalized = scale.shape
                // The constant must broadcast within the normalized dims.
                let trimmed = Array(c.shape.drop { $0 == 1 })
                guard trimmed.count <= normalized.count, ShapeMath.broadcast([normalized, c.shape]) == normalized || c.count == 1 else { continue }
                let expanded = try Indexing.broadcast(c.reshaped(Array(repeating: 1, count: max(0, normalized.count - c.rank)) + c.shape.suffix(normalized.count)), to: normalized).doubles
                var inputs = norm.inputs
                var initializers: [(String, Tensor)] = []
                let hasBias = inputs.count > 2 && !inputs[2].isEmpty
                let bias = hasBias ? ctx.constant(inputs[2])?.doubles : Array(repeating: 0.0, count: expanded.count)
                guard let bias, bias.count == expanded.count else { continue }
                if node.opType == "Mul" {
                    let s = scale.doubles
                    let newScale = ctx.graph.freshName("\(norm.name)_scale"), newBias = ctx.graph.freshName("\(norm.name)_bias")
                    initializers.append((newScale, try Tensor(scale.dataType, shape: normalized, doubles: (0..<s.count).map { s[$0] * expanded[$0] })))
                    inputs[1] = newScale
                    if hasBias {
                        initializers.append((newBias, try Tensor(scale.dataType, shape: normalized, doubles: (0..<s.count).map { bias[$0] * expanded[$0] })))
                        inputs[2] = newBias
                    }
                } else {
                    guard norm.opType == "LayerNormalization" else { continue }
                    let newBias = ctx.graph.freshName("\(norm.name)_bias")
                    initializers.append((newBias, try Tensor(scale.dataType, shape: normalized, doubles: (0..<expanded.count).map { bias[$0] + expanded[$0] })))
                    while inputs.count < 3 { inputs.append("") }
                    inputs[2] = newBias
                }
                let merged = Node(name: norm.name, opType: norm.opType, domain: norm.domain, inputs: inputs, outputs: node.outputs,
                                  attributes: norm.attributes, fusedFrom: norm.fusedFrom + node.fusedFrom)
                return Patch(statistic: "\(node.opType == "Mul" ? "scale" : "bias") absorbed into \(norm.opType)", remove: [norm, node], add: [merged], initializers: initializers)
            }
            return nil
        },
    ]

    /// The sizes of the normalized axes (from `axis` on), which must be known; the
    /// leading axes may be symbolic (batch and sequence of a dynamic export).
    static func normalizedShape(_ type: TensorType, from axis: Int) -> [Int]? {
        guard let dims = type.dims, axis <= dims.count else { return nil }
        let sizes = dims[axis...].compactMap(\.value)
        return sizes.count == dims.count - axis ? sizes : nil
    }

    /// The node squaring `value` (Pow(v, 2) or Mul(v, v)), read only by `reader`.
    static func squareNode(_ squared: String, of value: String, reader: Node, _ ctx: RewriteContext) -> Node? {
        if let p = ctx.interior(squared, "Pow", readBy: reader), p.inputs[0] == value, ctx.isConstant(p.inputs[1], 2) { return p }
        if let m = ctx.interior(squared, "Mul", readBy: reader), m.inputs == [value, value] { return m }
        return nil
    }

    /// The first axis of a keepdims ReduceMean over the trailing axes, nil otherwise.
    static func trailingAxis(_ reduce: Node, rank: Int, _ ctx: RewriteContext) -> Int? {
        let a = AttributeReader(node: reduce)
        guard (try? a.int("keepdims", 1)) == 1 else { return nil }
        let raw: [Int]? = ctx.pass.opset() < 18 ? (try? a.ints("axes")).flatMap { $0 } : (reduce.inputs.count > 1 ? ctx.constant(reduce.inputs[1])?.int64s.map { Int($0) } : nil)
        guard let raw, !raw.isEmpty else { return nil }
        let axes = raw.map { $0 < 0 ? $0 + rank : $0 }.sorted()
        guard let first = axes.first, axes == Array(first..<rank) else { return nil }
        return first
    }
}
