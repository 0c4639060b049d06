/// Little-endian byte encoding of tensor elements, as used by ONNX raw_data,
/// external data and NumPy files. Byte order is explicit, so the code is correct
/// on big-endian hosts too.
extension Tensor {
    /// Decodes `bytes` (exactly count × element size) into a tensor of `type` and `shape`.
    public static func fromLittleEndian(_ type: DataType, shape: [Int], bytes: UnsafeRawBufferPointer, name: String) throws -> Tensor {
        guard type != .string else {
            throw AnvilError.invalidTensor(name: name, reason: "string tensors cannot be stored as raw bytes")
        }
        guard let n = ShapeMath.elementCount(shape) else {
            throw AnvilError.invalidTensor(name: name, reason: "dims \(shape) are negative or describe more than 2^40 elements")
        }
        let (expected, overflow) = n.multipliedReportingOverflow(by: type.byteSize)
        guard !overflow, expected == bytes.count else {
            throw AnvilError.invalidTensor(name: name, reason: "dims \(shape) of \(type) need \(n * type.byteSize) bytes, the data has \(bytes.count)")
        }
        guard n > 0, let base = bytes.baseAddress else { return try Tensor.zeros(type, shape: shape) }
        #if _endian(little)
        // Host order is little-endian: one copy.
        return try fromHostBytes(type, shape: shape, bytes: base)
        #else
        var swapped = [UInt8](UnsafeRawBufferPointer(start: base, count: bytes.count))
        Self.swapElements(&swapped, width: type.byteSize)
        return try swapped.withUnsafeBytes { try fromHostBytes(type, shape: shape, bytes: $0.baseAddress!) }
        #endif
    }

    /// Reverses the bytes of each `width`-byte element (little-endian ↔ big-endian).
    static func swapElements(_ bytes: inout [UInt8], width: Int) {
        guard width > 1 else { return }
        for start in stride(from: 0, to: bytes.count, by: width) { bytes[start..<(start + width)].reverse() }
    }

    /// The elements as little-endian bytes (not defined for strings).
    public func littleEndianBytes() throws -> [UInt8] {
        let host = try withHostBytes { [UInt8]($0) }
        #if _endian(little)
        return host
        #else
        var swapped = host
        Self.swapElements(&swapped, width: dataType.byteSize)
        return swapped
        #endif
    }
}

extension Tensor {
    /// The elements in host byte order, as stored (not defined for strings).
    public func withHostBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        switch storage {
        case .float(let a): return try a.withUnsafeBytes(body)
        case .double(let a): return try a.withUnsafeBytes(body)
        case .float16(let a): return try a.withUnsafeBytes(body)
        case .bfloat16(let a): return try a.withUnsafeBytes(body)
        case .int8(let a): return try a.withUnsafeBytes(body)
        case .int16(let a): return try a.withUnsafeBytes(body)
        case .int32(let a): return try a.withUnsafeBytes(body)
        case .int64(let a): return try a.withUnsafeBytes(body)
        case .uint8(let a): return try a.withUnsafeBytes(body)
        case .uint16(let a): return try a.withUnsafeBytes(body)
        case .uint32(let a): return try a.withUnsafeBytes(body)
        case .uint64(let a): return try a.withUnsafeBytes(body)
        case .bool(let a): return try a.withUnsafeBytes(body)
        case .string: throw AnvilError.invalidTensor(name: "", reason: "string tensors have no raw byte form")
        }
    }

    /// A tensor copied from `bytes` in host byte order (count × element size bytes).
    public static func fromHostBytes(_ type: DataType, shape: [Int], bytes: UnsafeRawPointer) throws -> Tensor {
        guard let n = ShapeMath.elementCount(shape), type != .string else {
            throw AnvilError.invalidTensor(name: "", reason: "cannot copy \(type) \(shape) from memory")
        }
        func load<T>(_: T.Type) -> [T] {
            [T](unsafeUninitializedCapacity: n) { buffer, initialized in
                if n > 0 { UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: bytes, byteCount: n * MemoryLayout<T>.stride) }
                initialized = n
            }
        }
        let storage: TensorStorage = switch type {
        case .float: .float(load(Float.self))
        case .double: .double(load(Double.self))
        case .float16: .float16(load(Float16.self))
        case .bfloat16: .bfloat16(load(UInt16.self))
        case .int8: .int8(load(Int8.self))
        case .int16: .int16(load(Int16.self))
        case .int32: .int32(load(Int32.self))
        case .int64: .int64(load(Int64.self))
        case .uint8: .uint8(load(UInt8.self))
        case .uint16: .uint16(load(UInt16.self))
        case .uint32: .uint32(load(UInt32.self))
        case .uint64: .uint64(load(UInt64.self))
        case .bool: .bool(load(UInt8.self).map { $0 != 0 })
        case .string: .string([])
        }
        return try Tensor(shape: shape, storage: storage)
    }
}
