/// One dimension of a tensor type: a known size, a named symbol, or unknown.
public enum Dim: Hashable, Sendable, CustomStringConvertible {
    case known(Int)
    case symbol(String)
    case unknown

    /// Whether this is a symbol shape inference made up ("node:N": a size the data or the
    /// computation decides), not one a model declares.
    public var isMadeUp: Bool {
        guard case .symbol(let s) = self, let colon = s.lastIndex(of: ":") else { return false }
        let counter = s[s.index(after: colon)...]
        return !counter.isEmpty && counter.allSatisfy { ("0"..."9").contains($0) }
    }

    /// The size if known.
    public var value: Int? {
        if case .known(let v) = self { return v }
        return nil
    }

    public var description: String {
        switch self {
        case .known(let v): String(v)
        case .symbol(let s): s
        case .unknown: "?"
        }
    }
}

/// The static type of a value: element type and shape, each possibly unknown.
public struct TensorType: Hashable, Sendable, CustomStringConvertible {
    /// Element type, nil when not known.
    public var elementType: DataType?
    /// Dimensions; nil when even the rank is unknown.
    public var dims: [Dim]?

    public init(_ elementType: DataType?, _ dims: [Dim]?) {
        self.elementType = elementType
        self.dims = dims
    }

    /// A fully known type.
    public init(_ elementType: DataType, shape: [Int]) {
        self.elementType = elementType
        self.dims = shape.map { .known($0) }
    }

    /// The type of which nothing is known.
    public static let unknown = TensorType(nil, nil)

    /// Concrete shape when every dimension is known.
    public var concreteShape: [Int]? {
        guard let dims else { return nil }
        var shape: [Int] = []
        for d in dims {
            guard let v = d.value else { return nil }
            shape.append(v)
        }
        return shape
    }

    public var rank: Int? { dims?.count }

    public var description: String {
        let t = elementType?.description ?? "?"
        guard let dims else { return "\(t)[*]" }
        return "\(t)[\(dims.map(\.description).joined(separator: ","))]"
    }
}

/// Shape arithmetic shared by every module.
public enum ShapeMath {
    /// Largest element count Anvil accepts for one tensor (2^40, about one trillion).
    public static let maxElementCount = 1 << 40

    /// Product of the dimensions, or nil when it overflows or exceeds `maxElementCount`,
    /// or a dimension is negative.
    public static func elementCount(_ shape: [Int]) -> Int? {
        var count = 1
        for d in shape {
            guard d >= 0 else { return nil }
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, p <= maxElementCount else { return nil }
            count = p
        }
        return count
    }

    /// Row-major strides of a shape.
    /// Calls `body` with the position Σ index[d] · strides[d] of the first element of every
    /// row (the last dimension) of `shape`, in row-major order; nothing for an empty shape,
    /// once (position 0) for a scalar.
    @inlinable
    public static func forEachRow(_ shape: [Int], strides: [Int], _ body: (Int) -> Void) {
        guard shape.allSatisfy({ $0 > 0 }) else { return }
        let rank = shape.count
        guard rank > 1 else { return body(0) }
        let rows = shape.dropLast().reduce(1, *)
        var index = [Int](repeating: 0, count: rank - 1)
        var base = 0
        for _ in 0..<rows {
            body(base)
            var d = rank - 2
            while d >= 0 {
                index[d] += 1
                base += strides[d]
                if index[d] < shape[d] { break }
                base -= index[d] * strides[d]
                index[d] = 0
                d -= 1
            }
        }
    }

    public static func strides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var s = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[i] = s
            // Wrapping: only a shape with a zero dimension can overflow here, and it has no elements to address.
            s = s &* shape[i]
        }
        return strides
    }

    /// Numpy-style multidirectional broadcast of concrete shapes, nil if incompatible.
    public static func broadcast(_ shapes: [[Int]]) -> [Int]? {
        let rank = shapes.map(\.count).max() ?? 0
        var out = [Int](repeating: 1, count: rank)
        for shape in shapes {
            let offset = rank - shape.count
            for (i, d) in shape.enumerated() {
                let o = out[offset + i]
                if o == d || d == 1 { continue }
                if o == 1 { out[offset + i] = d } else { return nil }
            }
        }
        return out
    }

    /// Normalizes a possibly negative axis against a rank, nil when out of range.
    public static func normalizeAxis(_ axis: Int, rank: Int) -> Int? {
        let a = axis < 0 ? axis + rank : axis
        return (0..<max(rank, 0)).contains(a) ? a : nil
    }
}
