import AnvilCore

/// Index arithmetic shared by the reference kernels. Data movement is expressed as
/// "for each output element, which input element": one implementation then serves
/// every element type through `Tensor.gathered`.
public enum Indexing {
    /// For each element of `outShape`, the flat index of the element of `inShape`
    /// it reads under numpy broadcasting.
    public static func broadcastSource(_ inShape: [Int], to outShape: [Int]) -> [Int] {
        let rank = outShape.count
        let padded = [Int](repeating: 1, count: rank - inShape.count) + inShape
        let inStrides = ShapeMath.strides(padded)
        let n = outShape.reduce(1, *)
        if padded == outShape { return Array(0..<n) }
        // A broadcast dimension reads the same element: stride 0.
        return stridedPositions(outShape, strides: (0..<rank).map { padded[$0] == 1 ? 0 : inStrides[$0] })
    }

    /// For each element of `shape` in row-major order, Σ index[d] · strides[d]: the
    /// positions a strided view (a transpose, a broadcast with zero strides) reads.
    public static func stridedPositions(_ shape: [Int], strides: [Int]) -> [Int] {
        let n = shape.reduce(1, *)
        guard n > 0 else { return [] }
        let last = shape.last ?? 1, lastStride = strides.last ?? 0
        return [Int](unsafeUninitializedCapacity: n) { out, initialized in
            var i = 0
            ShapeMath.forEachRow(shape, strides: strides) { start in
                for j in 0..<last { out[i + j] = start + j * lastStride }
                i += last
            }
            initialized = n
        }
    }

    /// Broadcasts a tensor to a shape (numpy rules; the caller checked compatibility).
    public static func broadcast(_ t: Tensor, to shape: [Int]) throws -> Tensor {
        if t.shape == shape { return t }
        let padded = [Int](repeating: 1, count: shape.count - t.rank) + t.shape
        let strides = ShapeMath.strides(padded)
        return try t.strided(shape: shape, strides: (0..<shape.count).map { padded[$0] == 1 ? 0 : strides[$0] })
    }

    /// Visits every multi-index of `shape` in row-major order.
    @inline(__always)
    public static func forEachIndex(_ shape: [Int], _ body: ([Int]) -> Void) {
        let n = shape.reduce(1, *)
        guard n > 0 else { return }
        var index = [Int](repeating: 0, count: shape.count)
        for _ in 0..<n {
            body(index)
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
        }
    }

    /// The shape with `axes` removed (or set to 1 when `keep`).
    public static func reducedShape(_ shape: [Int], axes: Set<Int>, keep: Bool) -> [Int] {
        var out: [Int] = []
        for (i, d) in shape.enumerated() {
            if axes.contains(i) { if keep { out.append(1) } } else { out.append(d) }
        }
        return out
    }
}

/// Helpers for building outputs of a given element type.
extension Tensor {
    /// True when values of this type are computed in the Double domain by reference kernels.
    var computesInDouble: Bool { dataType == .double }

    /// Applies a Double function to every element, keeping the element type.
    public func mapFloating(_ f: (Double) -> Double) throws -> Tensor {
        switch storage {
        case .float(let a): return try Tensor(shape: shape, storage: .float(a.map { Float(f(Double($0))) }))
        case .double(let a): return try Tensor(shape: shape, storage: .double(a.map(f)))
        default: return try Tensor(dataType, shape: shape, floats: floats.map { Float(f(Double($0))) })
        }
    }
}
