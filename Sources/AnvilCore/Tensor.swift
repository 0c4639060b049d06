/// Element storage of a tensor, one case per Swift element representation.
/// float16 values are held as `Float16`; bfloat16 as their 16-bit patterns.
public enum TensorStorage: Sendable, Hashable {
    case float([Float])
    case double([Double])
    case float16([Float16])
    case bfloat16([UInt16])
    case int8([Int8])
    case int16([Int16])
    case int32([Int32])
    case int64([Int64])
    case uint8([UInt8])
    case uint16([UInt16])
    case uint32([UInt32])
    case uint64([UInt64])
    case bool([Bool])
    case string([String])

    /// The element type this storage holds.
    public var dataType: DataType {
        switch self {
        case .float: .float
        case .double: .double
        case .float16: .float16
        case .bfloat16: .bfloat16
        case .int8: .int8
        case .int16: .int16
        case .int32: .int32
        case .int64: .int64
        case .uint8: .uint8
        case .uint16: .uint16
        case .uint32: .uint32
        case .uint64: .uint64
        case .bool: .bool
        case .string: .string
        }
    }

    var count: Int {
        switch self {
        case .float(let a): a.count
        case .double(let a): a.count
        case .float16(let a): a.count
        case .bfloat16(let a): a.count
        case .int8(let a): a.count
        case .int16(let a): a.count
        case .int32(let a): a.count
        case .int64(let a): a.count
        case .uint8(let a): a.count
        case .uint16(let a): a.count
        case .uint32(let a): a.count
        case .uint64(let a): a.count
        case .bool(let a): a.count
        case .string(let a): a.count
        }
    }
}

/// A dense, row-major tensor value.
public struct Tensor: Sendable, Hashable, CustomStringConvertible {
    /// Element type.
    public let dataType: DataType
    /// Dimensions (empty for a scalar).
    public let shape: [Int]
    /// Elements in row-major order.
    public let storage: TensorStorage

    /// Number of elements.
    public var count: Int { storage.count }
    /// Rank (number of dimensions).
    public var rank: Int { shape.count }
    /// The static type of this value.
    public var type: TensorType { TensorType(dataType, shape: shape) }

    /// Wraps storage whose case must match `dataType` and whose count must match `shape`.
    public init(shape: [Int], storage: TensorStorage) throws {
        guard let n = ShapeMath.elementCount(shape) else {
            throw AnvilError.invalidTensor(name: "", reason: "shape \(shape) is invalid or has too many elements")
        }
        guard n == storage.count else {
            throw AnvilError.invalidTensor(name: "", reason: "shape \(shape) needs \(n) elements, data has \(storage.count)")
        }
        self.dataType = storage.dataType
        self.shape = shape
        self.storage = storage
    }

    /// A float tensor.
    public init(floats: [Float], shape: [Int]) throws { try self.init(shape: shape, storage: .float(floats)) }
    /// An int64 tensor.
    public init(int64s: [Int64], shape: [Int]) throws { try self.init(shape: shape, storage: .int64(int64s)) }

    /// A tensor of `type` built from Double values (rounded or truncated as a cast would).
    public init(_ type: DataType, shape: [Int], doubles: [Double]) throws {
        let storage: TensorStorage = switch type {
        case .float: .float(doubles.map { Float($0) })
        case .double: .double(doubles)
        case .float16: .float16(doubles.map { Float16(Float($0)) })
        case .bfloat16: .bfloat16(doubles.map { BFloat16Bits.fromFloat(Float($0)) })
        case .bool: .bool(doubles.map { $0 != 0 })
        case .string: .string(doubles.map { Tensor.formatNumber($0) })
        default: Tensor.integerStorage(type, doubles.map(Tensor.int64(fromDouble:)))
        }
        try self.init(shape: shape, storage: storage)
    }

    /// A tensor of `type` built from Float values; the fast path for float kernels.
    public init(_ type: DataType, shape: [Int], floats: [Float]) throws {
        switch type {
        case .float: try self.init(shape: shape, storage: .float(floats))
        case .float16: try self.init(shape: shape, storage: .float16(floats.map { Float16($0) }))
        case .bfloat16: try self.init(shape: shape, storage: .bfloat16(floats.map(BFloat16Bits.fromFloat)))
        default: try self.init(type, shape: shape, doubles: floats.map { Double($0) })
        }
    }

    /// A tensor of `type` built from Int64 values (wrapped to the width of `type`).
    public init(_ type: DataType, shape: [Int], int64s: [Int64]) throws {
        switch type {
        case .float, .double, .float16, .bfloat16:
            try self.init(type, shape: shape, doubles: int64s.map { Double($0) })
        case .bool: try self.init(shape: shape, storage: .bool(int64s.map { $0 != 0 }))
        case .string: try self.init(shape: shape, storage: .string(int64s.map { String($0) }))
        default: try self.init(shape: shape, storage: Tensor.integerStorage(type, int64s))
        }
    }

    /// A bool tensor.
    public init(bools: [Bool], shape: [Int]) throws { try self.init(shape: shape, storage: .bool(bools)) }

    /// A tensor of `type` and `shape` with every element zero (false, empty string).
    public static func zeros(_ type: DataType, shape: [Int]) throws -> Tensor {
        let n = try MemoryPolicy.checkedCount(shape, type, for: "a \(type) tensor")
        if type == .string { return try Tensor(shape: shape, storage: .string(Array(repeating: "", count: n))) }
        return try Tensor(type, shape: [], int64s: [0]).repeated(shape: shape)
    }

    /// A scalar int64.
    public static func scalar(_ v: Int64) -> Tensor { Tensor(unchecked: [], .int64([v])) }
    /// A scalar float.
    public static func scalar(_ v: Float) -> Tensor { Tensor(unchecked: [], .float([v])) }

    /// Internal initializer for storage already known to fit `shape`.
    init(unchecked shape: [Int], _ storage: TensorStorage) {
        self.shape = shape
        self.storage = storage
        self.dataType = storage.dataType
    }

    /// The same elements viewed with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        try Tensor(shape: newShape, storage: storage)
    }

    /// Elements as Float (integers converted, bools 0/1, strings parsed).
    public var floats: [Float] {
        switch storage {
        case .float(let a): a
        case .float16(let a): a.map { Float($0) }
        case .bfloat16(let a): a.map(BFloat16Bits.toFloat)
        default: doubles.map { Float($0) }
        }
    }

    /// Elements as Double (integers converted, bools 0/1, strings parsed).
    public var doubles: [Double] {
        switch storage {
        case .float(let a): a.map { Double($0) }
        case .double(let a): a
        case .float16(let a): a.map { Double(Float($0)) }
        case .bfloat16(let a): a.map { Double(BFloat16Bits.toFloat($0)) }
        case .int8(let a): a.map { Double($0) }
        case .int16(let a): a.map { Double($0) }
        case .int32(let a): a.map { Double($0) }
        case .int64(let a): a.map { Double($0) }
        case .uint8(let a): a.map { Double($0) }
        case .uint16(let a): a.map { Double($0) }
        case .uint32(let a): a.map { Double($0) }
        case .uint64(let a): a.map { Double($0) }
        case .bool(let a): a.map { $0 ? 1 : 0 }
        case .string(let a): a.map { Double($0) ?? .nan }
        }
    }

    /// Elements as Int64 (floats truncated toward zero and saturated, NaN to 0).
    public var int64s: [Int64] {
        switch storage {
        case .int8(let a): a.map { Int64($0) }
        case .int16(let a): a.map { Int64($0) }
        case .int32(let a): a.map { Int64($0) }
        case .int64(let a): a
        case .uint8(let a): a.map { Int64($0) }
        case .uint16(let a): a.map { Int64($0) }
        case .uint32(let a): a.map { Int64($0) }
        case .uint64(let a): a.map { Int64(bitPattern: $0) }
        case .bool(let a): a.map { $0 ? 1 : 0 }
        case .string(let a): a.map { Int64($0) ?? Tensor.int64(fromDouble: Double($0) ?? 0) }
        default: doubles.map(Tensor.int64(fromDouble:))
        }
    }

    /// Elements as Bool (nonzero is true).
    public var bools: [Bool] {
        switch storage {
        case .bool(let a): a
        case .string(let a): a.map { !$0.isEmpty }
        case .float(let a): a.map { $0 != 0 }
        case .double(let a): a.map { $0 != 0 }
        default: int64s.map { $0 != 0 }
        }
    }

    /// Elements as strings (numbers formatted as numpy prints them).
    public var strings: [String] {
        switch storage {
        case .string(let a): return a
        case .bool(let a): return a.map { $0 ? "True" : "False" }
        default:
            if dataType.isFloatingPoint { return doubles.map(Tensor.formatNumber) }
            if case .uint64(let a) = storage { return a.map { String($0) } }
            return int64s.map { String($0) }
        }
    }

    /// The element at flat index `i` as Double.
    public func double(at i: Int) -> Double {
        switch storage {
        case .float(let a): Double(a[i])
        case .double(let a): a[i]
        case .int64(let a): Double(a[i])
        case .int32(let a): Double(a[i])
        default: doubles[i]
        }
    }

    /// Converts this tensor to another element type with ONNX Cast semantics.
    public func cast(to type: DataType) throws -> Tensor {
        if type == dataType { return self }
        switch type {
        case .string: return try Tensor(shape: shape, storage: .string(strings))
        case .bool: return try Tensor(bools: bools, shape: shape)
        case .float, .float16, .bfloat16:
            if dataType == .string { return try Tensor(type, shape: shape, doubles: doubles) }
            if case .uint64(let a) = storage { return try Tensor(type, shape: shape, doubles: a.map { Double($0) }) }
            if case .double(let a) = storage { return try Tensor(type, shape: shape, floats: a.map { Float($0) }) }
            return try Tensor(type, shape: shape, floats: floats)
        case .double:
            if case .uint64(let a) = storage { return try Tensor(shape: shape, storage: .double(a.map { Double($0) })) }
            return try Tensor(shape: shape, storage: .double(doubles))
        case .uint64:
            if dataType.isFloatingPoint {
                return try Tensor(shape: shape, storage: .uint64(doubles.map { $0.isNaN || $0 <= 0 ? 0 : ($0 >= 1.8446744073709552e19 ? UInt64.max : UInt64($0)) }))
            }
            return try Tensor(shape: shape, storage: .uint64(int64s.map { UInt64(bitPattern: $0) }))
        default:
            return try Tensor(type, shape: shape, int64s: int64s)
        }
    }

    /// Int64 from Double: truncation toward zero, saturating, NaN to 0 (never traps).
    public static func int64(fromDouble d: Double) -> Int64 {
        if d.isNaN { return 0 }
        if d >= 9.223372036854775807e18 { return .max }
        if d <= -9.223372036854775808e18 { return .min }
        return Int64(d)
    }

    /// Formats a number as numpy's str() does for the common cases.
    static func formatNumber(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "INF" : "-INF" }
        return String(d)
    }

    static func integerStorage(_ type: DataType, _ v: [Int64]) -> TensorStorage {
        switch type {
        case .int8: .int8(v.map { Int8(truncatingIfNeeded: $0) })
        case .int16: .int16(v.map { Int16(truncatingIfNeeded: $0) })
        case .int32: .int32(v.map { Int32(truncatingIfNeeded: $0) })
        case .uint8: .uint8(v.map { UInt8(truncatingIfNeeded: $0) })
        case .uint16: .uint16(v.map { UInt16(truncatingIfNeeded: $0) })
        case .uint32: .uint32(v.map { UInt32(truncatingIfNeeded: $0) })
        case .uint64: .uint64(v.map { UInt64(bitPattern: $0) })
        case .bool: .bool(v.map { $0 != 0 })
        default: .int64(v)
        }
    }

    public var description: String {
        let preview = count <= 8 ? strings.joined(separator: ", ") : strings.prefix(8).joined(separator: ", ") + ", ..."
        return "\(dataType)\(shape) [\(preview)]"
    }

    /// A tensor with the elements at the given flat indices of this one, in the given shape.
    public func gathered(_ indices: [Int], shape newShape: [Int]) throws -> Tensor {
        try transformed(Pick(indices: indices), shape: newShape)
    }

    /// The strided view of this tensor's elements of `shape` and `strides` (in elements),
    /// as a tensor: a transpose permutes the strides, a broadcast sets some to 0.
    public func strided(shape newShape: [Int], strides: [Int]) throws -> Tensor {
        let n = try MemoryPolicy.checkedCount(newShape, dataType, for: "a \(dataType) tensor")
        guard strides.count == newShape.count, strides.allSatisfy({ $0 >= 0 }),
              n == 0 || zip(newShape, strides).reduce(0, { $0 + ($1.0 - 1) * $1.1 }) < count else {
            throw AnvilError.invalidTensor(name: "", reason: "strides \(strides) of shape \(newShape) do not fit \(count) elements")
        }
        return try transformed(Strided(shape: newShape, strides: strides, count: n), shape: newShape)
    }

    /// The blocks of `size` consecutive elements starting at the flat positions `starts`, one
    /// after the other, in `newShape` (the caller checked that every block lies inside).
    public func gatheringBlocks(at starts: [Int], size: Int, shape newShape: [Int]) throws -> Tensor {
        guard starts.count * size == ShapeMath.elementCount(newShape), starts.allSatisfy({ $0 >= 0 && $0 + size <= count }) else {
            throw AnvilError.invalidTensor(name: "", reason: "\(starts.count) blocks of \(size) elements do not fit \(newShape) from \(count) elements")
        }
        return try transformed(Blocks(starts: starts, size: size), shape: newShape)
    }

    /// A tensor of `shape` holding this one-element tensor's value everywhere.
    public func repeated(shape newShape: [Int]) throws -> Tensor {
        guard count == 1 else {
            throw AnvilError.invalidTensor(name: "", reason: "cannot repeat \(dataType)\(shape) as \(newShape)")
        }
        let n = try MemoryPolicy.checkedCount(newShape, dataType, for: "a \(dataType) tensor")
        return try transformed(Fill(count: n), shape: newShape)
    }

    /// A copy with the blocks of `block` elements starting at flat `positions` replaced, in
    /// order, by `values`' blocks (`values` of the same element type, `positions.count · block`
    /// elements; the caller checked the positions).
    public func replacing(blocksAt positions: [Int], block: Int, with values: Tensor) throws -> Tensor {
        guard values.dataType == dataType, values.count == positions.count * block, positions.allSatisfy({ $0 >= 0 && $0 + block <= count }) else {
            throw AnvilError.invalidTensor(name: "", reason: "\(values.dataType)\(values.shape) cannot fill \(positions.count) blocks of \(block) \(dataType) elements")
        }
        return try transformed(Put(positions: positions, block: block, values: values.elementArray), shape: shape)
    }

    /// The element array, whatever its type.
    var elementArray: Any {
        switch storage {
        case .float(let a): a
        case .double(let a): a
        case .float16(let a): a
        case .bfloat16(let a): a
        case .int8(let a): a
        case .int16(let a): a
        case .int32(let a): a
        case .int64(let a): a
        case .uint8(let a): a
        case .uint16(let a): a
        case .uint32(let a): a
        case .uint64(let a): a
        case .bool(let a): a
        case .string(let a): a
        }
    }

    /// A function of an element array of any element type (`transformed`).
    protocol ElementArrayTransform {
        func apply<T>(_ elements: [T]) throws -> [T]
    }

    /// This tensor's element array transformed, in `newShape`.
    func transformed(_ f: some ElementArrayTransform, shape newShape: [Int]) throws -> Tensor {
        let s: TensorStorage = switch storage {
        case .float(let a): .float(try f.apply(a))
        case .double(let a): .double(try f.apply(a))
        case .float16(let a): .float16(try f.apply(a))
        case .bfloat16(let a): .bfloat16(try f.apply(a))
        case .int8(let a): .int8(try f.apply(a))
        case .int16(let a): .int16(try f.apply(a))
        case .int32(let a): .int32(try f.apply(a))
        case .int64(let a): .int64(try f.apply(a))
        case .uint8(let a): .uint8(try f.apply(a))
        case .uint16(let a): .uint16(try f.apply(a))
        case .uint32(let a): .uint32(try f.apply(a))
        case .uint64(let a): .uint64(try f.apply(a))
        case .bool(let a): .bool(try f.apply(a))
        case .string(let a): .string(try f.apply(a))
        }
        return try Tensor(shape: newShape, storage: s)
    }

    struct Pick: ElementArrayTransform {
        let indices: [Int]
        func apply<T>(_ a: [T]) -> [T] { indices.map { a[$0] } }
    }

    struct Strided: ElementArrayTransform {
        let shape: [Int], strides: [Int], count: Int
        func apply<T>(_ a: [T]) -> [T] {
            guard count > 0 else { return [] }
            let last = shape.last ?? 1, lastStride = strides.last ?? 0
            return [T](unsafeUninitializedCapacity: count) { out, initialized in
                a.withUnsafeBufferPointer { source in
                    var i = 0
                    ShapeMath.forEachRow(shape, strides: strides) { start in
                        if lastStride == 1 {
                            (out.baseAddress! + i).initialize(from: source.baseAddress! + start, count: last)
                        } else {
                            for j in 0..<last { (out.baseAddress! + i + j).initialize(to: source[start + j * lastStride]) }
                        }
                        i += last
                    }
                }
                initialized = count
            }
        }
    }

    struct Blocks: ElementArrayTransform {
        let starts: [Int], size: Int
        func apply<T>(_ a: [T]) -> [T] {
            let n = starts.count * size
            guard n > 0 else { return [] }
            return [T](unsafeUninitializedCapacity: n) { out, initialized in
                a.withUnsafeBufferPointer { source in
                    let from = source.baseAddress!, to = out.baseAddress!
                    if size <= 16 {
                        // Small blocks (a box's four corners, single scores): element by element, no call per block.
                        for (k, start) in starts.enumerated() { for j in 0..<size { (to + k * size + j).initialize(to: from[start + j]) } }
                    } else {
                        for (k, start) in starts.enumerated() { (to + k * size).initialize(from: from + start, count: size) }
                    }
                }
                initialized = n
            }
        }
    }

    struct Fill: ElementArrayTransform {
        let count: Int
        func apply<T>(_ a: [T]) -> [T] { [T](repeating: a[0], count: count) }
    }

    struct Put: ElementArrayTransform {
        let positions: [Int], block: Int
        let values: Any
        func apply<T>(_ a: [T]) throws -> [T] {
            guard let v = values as? [T] else { throw AnvilError.invalidTensor(name: "", reason: "replacement values of another element type") }
            var out = a
            out.withUnsafeMutableBufferPointer { o in
                v.withUnsafeBufferPointer { u in
                    for (k, p) in positions.enumerated() {
                        for j in 0..<block { o[p + j] = u[k * block + j] }
                    }
                }
            }
            return out
        }
    }

    /// Concatenates the flat elements of tensors of one element type into one storage.
    public static func concatenatedStorage(_ parts: [Tensor], type: DataType) -> TensorStorage {
        switch type {
        case .float: .float(parts.flatMap { $0.floats })
        case .double: .double(parts.flatMap { $0.doubles })
        case .string: .string(parts.flatMap { $0.strings })
        case .bool: .bool(parts.flatMap { $0.bools })
        case .float16:
            .float16(parts.flatMap { p -> [Float16] in if case .float16(let a) = p.storage { return a }; return p.floats.map { Float16($0) } })
        case .bfloat16:
            .bfloat16(parts.flatMap { p -> [UInt16] in if case .bfloat16(let a) = p.storage { return a }; return p.floats.map(BFloat16Bits.fromFloat) })
        case .uint64:
            .uint64(parts.flatMap { p -> [UInt64] in if case .uint64(let a) = p.storage { return a }; return p.int64s.map { UInt64(bitPattern: $0) } })
        default: integerStorage(type, parts.flatMap { $0.int64s })
        }
    }
}

extension Tensor {
    /// Bytes its values take (strings counted at 16 bytes each, their inline size).
    public var byteCount: Int { count * (dataType == .string ? 16 : dataType.byteSize) }
}
