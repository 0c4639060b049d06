import AnvilCore
import Foundation

/// Reference kernels for reductions, arg-reductions, CumSum and TopK.
public enum Reduce {
    /// Reduction kinds (ReduceSum, ReduceMean ...).
    public enum Kind: String, Sendable {
        case sum, mean, max, min, prod, l1, l2, logSum, logSumExp, sumSquare
    }

    /// Reduces `x` over `axes` (already normalized; empty means all unless `noopWithEmptyAxes`).
    public static func reduce(_ x: Tensor, axes: [Int], keepDims: Bool, kind: Kind) throws -> Tensor {
        let axisSet = Set(axes.isEmpty ? Array(0..<x.rank) : axes)
        let outShape = Indexing.reducedShape(x.shape, axes: axisSet, keep: keepDims)
        let keptShape = Indexing.reducedShape(x.shape, axes: axisSet, keep: true)
        let outCount = keptShape.reduce(1, *)
        let keptStrides = ShapeMath.strides(keptShape)
        // Map each input element to its output slot.
        var slot = [Int](repeating: 0, count: x.count)
        var i = 0
        Indexing.forEachIndex(x.shape) { idx in
            var s = 0
            for d in 0..<idx.count where !axisSet.contains(d) { s += idx[d] * keptStrides[d] }
            slot[i] = s
            i += 1
        }
        let groupSize = x.count / max(outCount, 1)
        if x.dataType == .bool && (kind == .max || kind == .min) {
            // Any / all; over an empty set the identities false / true.
            var acc = [Bool](repeating: kind == .min, count: outCount)
            for (j, e) in x.bools.enumerated() { acc[slot[j]] = kind == .max ? (acc[slot[j]] || e) : (acc[slot[j]] && e) }
            return try Tensor(bools: acc, shape: outShape)
        }
        if x.dataType.isInteger && [.sum, .max, .min, .prod, .l1, .sumSquare].contains(kind) {
            let v = x.int64s
            var acc: [Int64] = Array(repeating: kind == .prod ? 1 : (kind == .max ? .min : (kind == .min ? .max : 0)), count: outCount)
            for (j, e) in v.enumerated() {
                let s = slot[j]
                switch kind {
                case .sum: acc[s] &+= e
                case .max: acc[s] = Swift.max(acc[s], e)
                case .min: acc[s] = Swift.min(acc[s], e)
                case .prod: acc[s] &*= e
                case .l1: acc[s] &+= abs(e)
                default: acc[s] &+= e &* e
                }
            }
            return try Tensor(x.dataType, shape: outShape, int64s: acc)
        }
        let v = x.doubles
        let initial: Double = switch kind {
        case .prod: 1
        case .max: -.infinity
        case .min: .infinity
        default: 0
        }
        var acc = [Double](repeating: initial, count: outCount)
        var maxes = [Double](repeating: -.infinity, count: outCount)
        if kind == .logSumExp { for (j, e) in v.enumerated() { maxes[slot[j]] = Swift.max(maxes[slot[j]], e) } }
        for (j, e) in v.enumerated() {
            let s = slot[j]
            switch kind {
            case .sum, .mean, .logSum: acc[s] += e
            case .max: acc[s] = e.isNaN || acc[s].isNaN ? .nan : Swift.max(acc[s], e)
            case .min: acc[s] = e.isNaN || acc[s].isNaN ? .nan : Swift.min(acc[s], e)
            case .prod: acc[s] *= e
            case .l1: acc[s] += abs(e)
            case .l2, .sumSquare: acc[s] += e * e
            case .logSumExp: acc[s] += Foundation.exp(e - (maxes[s].isFinite ? maxes[s] : 0))
            }
        }
        for s in 0..<outCount {
            switch kind {
            case .mean: acc[s] /= Double(groupSize)
            case .l2: acc[s] = acc[s].squareRoot()
            case .logSum: acc[s] = Foundation.log(acc[s])
            case .logSumExp: acc[s] = Foundation.log(acc[s]) + (maxes[s].isFinite ? maxes[s] : 0)
            default: break
            }
        }
        if x.dataType.isInteger { return try Tensor(x.dataType, shape: outShape, int64s: acc.map { Tensor.int64(fromDouble: $0) }) }
        return try Tensor(x.dataType, shape: outShape, doubles: acc)
    }

    /// ArgMax / ArgMin along one axis; `selectLast` picks the last of equal values.
    public static func argExtreme(_ x: Tensor, axis: Int, keepDims: Bool, selectLast: Bool, max: Bool) throws -> Tensor {
        let outer = x.shape[..<axis].reduce(1, *), n = x.shape[axis], inner = x.shape[(axis + 1)...].reduce(1, *)
        let v = x.doubles
        var out = [Int64](repeating: 0, count: outer * inner)
        for o in 0..<outer {
            for i in 0..<inner {
                var best = 0
                for k in 1..<Swift.max(n, 1) {
                    let a = v[(o * n + k) * inner + i], b = v[(o * n + best) * inner + i]
                    if max ? (a > b || (selectLast && a == b)) : (a < b || (selectLast && a == b)) { best = k }
                }
                out[o * inner + i] = Int64(best)
            }
        }
        var shape = x.shape
        if keepDims { shape[axis] = 1 } else { shape.remove(at: axis) }
        return try Tensor(int64s: out, shape: shape)
    }

    /// CumSum (or CumProd with `product`) along an axis, optionally exclusive and/or reversed.
    public static func cumulative(_ x: Tensor, axis: Int, exclusive: Bool, reverse: Bool, product: Bool = false) throws -> Tensor {
        let outer = x.shape[..<axis].reduce(1, *), n = x.shape[axis], inner = x.shape[(axis + 1)...].reduce(1, *)
        let integer = x.dataType.isInteger
        let vd = integer ? [] : x.doubles
        let vi = integer ? x.int64s : []
        var od = [Double](repeating: 0, count: integer ? 0 : x.count)
        var oi = [Int64](repeating: 0, count: integer ? x.count : 0)
        for o in 0..<outer {
            for i in 0..<inner {
                var sd: Double = product ? 1 : 0
                var si: Int64 = product ? 1 : 0
                for step in 0..<n {
                    let k = reverse ? n - 1 - step : step
                    let at = (o * n + k) * inner + i
                    if integer {
                        if exclusive { oi[at] = si }
                        si = product ? si &* vi[at] : si &+ vi[at]
                        if !exclusive { oi[at] = si }
                    } else {
                        if exclusive { od[at] = sd }
                        sd = product ? sd * vd[at] : sd + vd[at]
                        if !exclusive { od[at] = sd }
                    }
                }
            }
        }
        return integer ? try Tensor(x.dataType, shape: x.shape, int64s: oi) : try Tensor(x.dataType, shape: x.shape, doubles: od)
    }

    /// TopK along an axis; ties keep the lower index first, NaN ranks above every number.
    public static func topK(_ x: Tensor, k: Int, axis: Int, largest: Bool, sorted: Bool) throws -> (Tensor, Tensor) {
        let outer = x.shape[..<axis].reduce(1, *), n = x.shape[axis], inner = x.shape[(axis + 1)...].reduce(1, *)
        guard k >= 0, k <= n else { throw AnvilError.invalidTensor(name: "TopK", reason: "k = \(k) is outside 0...\(n)") }
        let v = x.doubles
        var picks: [Int] = []
        var indices: [Int64] = []
        picks.reserveCapacity(outer * k * inner)
        var outPos = [Int](repeating: 0, count: outer * k * inner)
        var outIdx = [Int64](repeating: 0, count: outer * k * inner)
        for o in 0..<outer {
            for i in 0..<inner {
                let order = (0..<n).sorted { a, b in
                    let x = v[(o * n + a) * inner + i], y = v[(o * n + b) * inner + i]
                    // NaN ranks above every number (numpy's and PyTorch's order).
                    if x.isNaN || y.isNaN { return x.isNaN && y.isNaN ? a < b : (largest ? x.isNaN : y.isNaN) }
                    if x == y { return a < b }
                    return largest ? x > y : x < y
                }
                for j in 0..<k {
                    outPos[(o * k + j) * inner + i] = (o * n + order[j]) * inner + i
                    outIdx[(o * k + j) * inner + i] = Int64(order[j])
                }
            }
        }
        picks = outPos
        indices = outIdx
        var shape = x.shape
        shape[axis] = k
        return (try x.gathered(picks, shape: shape), try Tensor(int64s: indices, shape: shape))
    }
}
