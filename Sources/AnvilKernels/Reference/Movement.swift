import AnvilCore

/// Reference kernels for data movement. Each computes, for every output element,
/// the flat index of the input element it copies, so one code path serves all
/// element types.
public enum Movement {
    public static func transpose(_ x: Tensor, perm: [Int]) throws -> Tensor {
        guard perm.count == x.rank, Set(perm) == Set(0..<x.rank) else {
            throw AnvilError.invalidTensor(name: "Transpose", reason: "perm \(perm) is not a permutation of \(x.rank) axes")
        }
        let outShape = perm.map { x.shape[$0] }
        let inStrides = ShapeMath.strides(x.shape)
        return try x.strided(shape: outShape, strides: perm.map { inStrides[$0] })
    }

    public static func concat(_ inputs: [Tensor], axis: Int) throws -> Tensor {
        guard let first = inputs.first else { throw AnvilError.invalidTensor(name: "Concat", reason: "no inputs") }
        for t in inputs where t.rank != first.rank || t.dataType != first.dataType ||
            (0..<t.rank).contains(where: { $0 != axis && t.shape[$0] != first.shape[$0] }) {
            throw AnvilError.invalidTensor(name: "Concat", reason: "input \(t.dataType)\(t.shape) does not match \(first.dataType)\(first.shape) outside axis \(axis)")
        }
        let outer = first.shape[..<axis].reduce(1, *)
        var outShape = first.shape
        outShape[axis] = inputs.reduce(0) { $0 + $1.shape[axis] }
        var idx: [Int] = []
        idx.reserveCapacity(outShape.reduce(1, *))
        var offsets: [Int] = []
        var total = 0
        for t in inputs { offsets.append(total); total += t.count }
        for o in 0..<outer {
            for (k, t) in inputs.enumerated() {
                let block = t.shape[axis...].reduce(1, *)
                let start = offsets[k] + o * block
                idx.append(contentsOf: start..<(start + block))
            }
        }
        let all = try Tensor(shape: [total], storage: Tensor.concatenatedStorage(inputs, type: first.dataType))
        return try all.gathered(idx, shape: outShape)
    }

    /// Slices with per-axis start, end and step (already clamped by the caller).
    public static func slice(_ x: Tensor, starts: [Int], steps: [Int], counts: [Int]) throws -> Tensor {
        let strides = ShapeMath.strides(x.shape)
        var idx: [Int] = []
        idx.reserveCapacity(counts.reduce(1, *))
        Indexing.forEachIndex(counts) { o in
            var s = 0
            for d in 0..<o.count { s += (starts[d] + o[d] * steps[d]) * strides[d] }
            idx.append(s)
        }
        return try x.gathered(idx, shape: counts)
    }

    /// Gather along an axis; negative indices count from the end.
    public static func gather(_ x: Tensor, indices: Tensor, axis: Int) throws -> Tensor {
        let n = x.shape[axis]
        let ind = try normalizedIndices(indices.int64s, bound: n, op: "Gather")
        let outer = x.shape[..<axis].reduce(1, *), inner = x.shape[(axis + 1)...].reduce(1, *)
        let shape = Array(x.shape[..<axis]) + indices.shape + Array(x.shape[(axis + 1)...])
        try MemoryPolicy.checkedCount(shape, x.dataType, for: "Gather's output")
        var starts: [Int] = []
        starts.reserveCapacity(outer * ind.count)
        for o in 0..<outer { for k in ind { starts.append((o * n + k) * inner) } }
        return try x.gatheringBlocks(at: starts, size: inner, shape: shape)
    }

    static func normalizedIndices(_ v: [Int64], bound: Int, op: String) throws -> [Int] {
        try v.map { i in
            let k = i < 0 ? Int(i) + bound : Int(i)
            guard k >= 0, k < bound else { throw AnvilError.invalidTensor(name: op, reason: "index \(i) is out of range for a dimension of size \(bound)") }
            return k
        }
    }

    /// For each element of `indices`, the flat position in `x` it addresses along `axis`.
    static func elementPositions(_ x: Tensor, indices: Tensor, axis: Int, op: String) throws -> [Int] {
        guard indices.rank == x.rank, (0..<x.rank).allSatisfy({ $0 == axis || indices.shape[$0] <= x.shape[$0] }) else {
            throw AnvilError.invalidTensor(name: op, reason: "indices \(indices.shape) do not fit data \(x.shape) (the same rank, no larger off axis \(axis))")
        }
        // The position of every index's own element in x (x's strides over the indices' shape),
        // with the index's coordinate along `axis` replaced by the index.
        var strides = ShapeMath.strides(x.shape)
        let axisStride = strides[axis], bound = x.shape[axis]
        strides[axis] = 0
        var positions = Indexing.stridedPositions(indices.shape, strides: strides)
        let v = indices.int64s
        for i in positions.indices {
            let k = v[i] < 0 ? Int(v[i]) + bound : Int(v[i])
            guard k >= 0, k < bound else { throw AnvilError.invalidTensor(name: op, reason: "index \(v[i]) is out of range for a dimension of size \(bound)") }
            positions[i] += k * axisStride
        }
        return positions
    }

    public static func gatherElements(_ x: Tensor, indices: Tensor, axis: Int) throws -> Tensor {
        try x.gathered(elementPositions(x, indices: indices, axis: axis, op: "GatherElements"), shape: indices.shape)
    }

    public static func scatterElements(_ x: Tensor, indices: Tensor, updates: Tensor, axis: Int, reduction: String) throws -> Tensor {
        let targets = try elementPositions(x, indices: indices, axis: axis, op: "ScatterElements")
        return try scatter(x, targets: targets, updates: updates, reduction: reduction, blockSize: 1)
    }

    /// Writes `updates` (blocks of `blockSize`) at flat positions `targets` of `x`.
    static func scatter(_ x: Tensor, targets: [Int], updates: Tensor, reduction: String, blockSize: Int) throws -> Tensor {
        let u = try updates.cast(to: x.dataType)
        if reduction == "none" { return try x.replacing(blocksAt: targets, block: blockSize, with: u) }
        if x.dataType.isInteger {
            var out = x.int64s
            let uv = u.int64s
            for (k, t) in targets.enumerated() { for j in 0..<blockSize { out[t + j] = combine(out[t + j], uv[k * blockSize + j], reduction) } }
            return try Tensor(x.dataType, shape: x.shape, int64s: out)
        }
        var out = x.doubles
        let uv = u.doubles
        for (k, t) in targets.enumerated() { for j in 0..<blockSize { out[t + j] = combine(out[t + j], uv[k * blockSize + j], reduction) } }
        return try Tensor(x.dataType, shape: x.shape, doubles: out)
    }

    static func combine<T: Comparable & Numeric>(_ a: T, _ b: T, _ reduction: String) -> T {
        switch reduction {
        case "add": a + b
        case "mul": a * b
        case "max": max(a, b)
        case "min": min(a, b)
        default: b
        }
    }

    /// Flat offsets of the slices addressed by the last dimension of `indices` (GatherND / ScatterND).
    static func ndOffsets(_ x: Tensor, indices: Tensor, batchDims: Int, op: String) throws -> (offsets: [Int], blockShape: [Int]) {
        let q = indices.rank, k = indices.shape[q - 1]
        guard batchDims + k <= x.rank else { throw AnvilError.invalidTensor(name: op, reason: "index depth \(k) with \(batchDims) batch dims exceeds data rank \(x.rank)") }
        let blockShape = Array(x.shape[(batchDims + k)...])
        let xs = ShapeMath.strides(x.shape)
        let v = indices.int64s
        let batchCount = indices.shape[..<batchDims].reduce(1, *)
        let perBatch = indices.shape[batchDims..<(q - 1)].reduce(1, *)
        let batchStride = batchDims > 0 ? xs[batchDims - 1] : 0
        let bounds = Array(x.shape[batchDims..<(batchDims + k)]), strides = Array(xs[batchDims..<(batchDims + k)])
        var offsets = [Int](repeating: 0, count: batchCount * perBatch)
        try v.withUnsafeBufferPointer { index in
            for b in 0..<batchCount {
                for j in 0..<perBatch {
                    var off = b * batchStride
                    let row = (b * perBatch + j) * k
                    for d in 0..<k {
                        var i = Int(index[row + d])
                        if i < 0 { i += bounds[d] }
                        guard i >= 0, i < bounds[d] else { throw AnvilError.invalidTensor(name: op, reason: "index \(index[row + d]) is out of range for size \(bounds[d])") }
                        off += i * strides[d]
                    }
                    offsets[b * perBatch + j] = off
                }
            }
        }
        return (offsets, blockShape)
    }

    public static func gatherND(_ x: Tensor, indices: Tensor, batchDims: Int) throws -> Tensor {
        let (offsets, blockShape) = try ndOffsets(x, indices: indices, batchDims: batchDims, op: "GatherND")
        return try x.gatheringBlocks(at: offsets, size: blockShape.reduce(1, *), shape: Array(indices.shape.dropLast()) + blockShape)
    }

    public static func scatterND(_ x: Tensor, indices: Tensor, updates: Tensor, reduction: String) throws -> Tensor {
        let (offsets, blockShape) = try ndOffsets(x, indices: indices, batchDims: 0, op: "ScatterND")
        return try scatter(x, targets: offsets, updates: updates, reduction: reduction, blockSize: blockShape.reduce(1, *))
    }

    public static func tile(_ x: Tensor, repeats: [Int]) throws -> Tensor {
        guard repeats.count == x.rank, repeats.allSatisfy({ $0 >= 0 }) else {
            throw AnvilError.invalidTensor(name: "Tile", reason: "repeats \(repeats) do not fit rank \(x.rank)")
        }
        let outShape = try zip(x.shape, repeats).map { d, r -> Int in
            let (n, overflow) = d.multipliedReportingOverflow(by: r)
            guard !overflow else { throw AnvilError.invalidTensor(name: "Tile", reason: "repeats \(repeats) of \(x.shape) give a size that does not fit 64 bits") }
            return n
        }
        try MemoryPolicy.checkedCount(outShape, x.dataType, for: "Tile's output")
        let xs = ShapeMath.strides(x.shape)
        var idx: [Int] = []
        Indexing.forEachIndex(outShape) { o in
            var s = 0
            for d in 0..<o.count { s += (o[d] % x.shape[d]) * xs[d] }
            idx.append(s)
        }
        return try x.gathered(idx, shape: outShape)
    }

    /// Pad with mode "constant", "reflect", "edge" or "wrap"; pads are begins then ends per axis.
    /// The index along a dimension of size `n` that Pad reads for index `i` of the unpadded
    /// range (negative or past the end in the padding); nil where constant mode fills.
    public static func padSource(_ i: Int, size n: Int, mode: String) -> Int? {
        guard i < 0 || i >= n else { return i }
        switch mode {
        case "edge": return min(max(i, 0), n - 1)
        case "reflect":
            if n == 1 { return 0 }
            let period = 2 * (n - 1)
            let k = ((i % period) + period) % period
            return k >= n ? period - k : k
        case "wrap": return ((i % n) + n) % n
        default: return nil
        }
    }

    public static func pad(_ x: Tensor, pads: [Int], mode: String, value: Tensor?) throws -> Tensor {
        let r = x.rank
        let outShape = try (0..<r).map { d -> Int in
            let (a, o1) = x.shape[d].addingReportingOverflow(pads[d]), (b, o2) = a.addingReportingOverflow(pads[d + r])
            guard !o1, !o2 else { throw AnvilError.invalidTensor(name: "Pad", reason: "pads \(pads) are too large") }
            return b
        }
        guard outShape.allSatisfy({ $0 >= 0 }) else { throw AnvilError.invalidTensor(name: "Pad", reason: "pads \(pads) remove more than the shape \(x.shape)") }
        try MemoryPolicy.checkedCount(outShape, x.dataType, for: "Pad's output")
        let xs = ShapeMath.strides(x.shape)
        var idx: [Int] = []
        Indexing.forEachIndex(outShape) { o in
            var s = 0
            for d in 0..<r {
                guard let i = padSource(o[d] - pads[d], size: x.shape[d], mode: mode) else { s = -1; break }
                s += i * xs[d]
            }
            idx.append(s)
        }
        let fill = try (value?.cast(to: x.dataType).reshaped([1]) ?? Tensor.zeros(x.dataType, shape: [1]))
        let source = try x.reshaped([x.count]).appending(fill.count > 0 ? Tensor(shape: [1], storage: fill.gathered([0], shape: [1]).storage) : Tensor.zeros(x.dataType, shape: [1]))
        return try source.gathered(idx.map { $0 < 0 ? x.count : $0 }, shape: outShape)
    }

    public static func depthToSpace(_ x: Tensor, blockSize b: Int, crd: Bool) throws -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        guard b > 0, c % (b * b) == 0 else { throw AnvilError.invalidTensor(name: "DepthToSpace", reason: "channels \(c) not divisible by blocksize² \(b * b)") }
        let t = crd ? try x.reshaped([n, c / (b * b), b, b, h, w]) : try x.reshaped([n, b, b, c / (b * b), h, w])
        let perm = crd ? [0, 1, 4, 2, 5, 3] : [0, 3, 4, 1, 5, 2]
        return try transpose(t, perm: perm).reshaped([n, c / (b * b), h * b, w * b])
    }

    public static func spaceToDepth(_ x: Tensor, blockSize b: Int, crd: Bool = false) throws -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        guard b > 0, h % b == 0, w % b == 0 else { throw AnvilError.invalidTensor(name: "SpaceToDepth", reason: "spatial \(h)×\(w) not divisible by blocksize \(b)") }
        let t = try x.reshaped([n, c, h / b, b, w / b, b])
        return try transpose(t, perm: crd ? [0, 1, 3, 5, 2, 4] : [0, 3, 5, 1, 2, 4]).reshaped([n, c * b * b, h / b, w / b])
    }

    public static func trilu(_ x: Tensor, k: Int, upper: Bool) throws -> Tensor {
        let rows = x.shape[x.rank - 2], cols = x.shape[x.rank - 1]
        var idx: [Int] = []
        for i in 0..<x.count {
            let c = i % cols, r = (i / cols) % rows
            let keep = upper ? c - r >= k : c - r <= k
            idx.append(keep ? i : x.count)
        }
        return try x.reshaped([x.count]).appending(Tensor.zeros(x.dataType, shape: [1])).gathered(idx, shape: x.shape)
    }

    public static func nonZero(_ x: Tensor) throws -> Tensor {
        let flags = x.bools
        var count = 0
        for f in flags where f { count += 1 }
        var out = [Int64](repeating: 0, count: x.rank * count)
        if count > 0 {
            // Coordinates kept as a counter over x's shape, written for each true element.
            var index = [Int](repeating: 0, count: x.rank)
            var j = 0
            for f in flags {
                if f {
                    for d in 0..<x.rank { out[d * count + j] = Int64(index[d]) }
                    j += 1
                }
                var d = x.rank - 1
                while d >= 0 {
                    index[d] += 1
                    if index[d] < x.shape[d] { break }
                    index[d] = 0
                    d -= 1
                }
            }
        }
        return try Tensor(int64s: out, shape: [x.rank, count])
    }
}
