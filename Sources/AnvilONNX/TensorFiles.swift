import AnvilCore
import CONNX
import Foundation

/// Reads and writes tensor files: ONNX TensorProto (`.pb`) and NumPy (`.npy`); reads NumPy archives (`.npz`).
public enum TensorFiles {
    /// Largest tensor file accepted.
    public static let maxFileBytes = 16 << 30

    /// Reads a tensor; the format follows the extension (.npy, .npz, otherwise TensorProto).
    /// Returns the name stored in the file ("" for .npy). From an .npz archive: the member
    /// named `member`, else its only member.
    public static func read(_ path: String, member: String? = nil) throws -> (name: String, tensor: Tensor) {
        if path.hasSuffix(".npz") {
            let all = try readAll(path)
            if let member, let found = all.first(where: { $0.name == member }) { return found }
            guard all.count == 1 else {
                throw AnvilError.invalidTensor(name: member ?? path, reason: "\(path) holds \(all.count) arrays (\(all.map(\.name).joined(separator: ", ")))"
                                                + (member.map { ", none named '\($0)'" } ?? ""))
            }
            return all[0]
        }
        let bytes = try ONNXImporter.readFile(path, limit: maxFileBytes, what: "tensor")
        if path.hasSuffix(".npy") { return ("", try NumPy.decode(bytes, file: path)) }
        return try ONNXImporter.decodeTensor(bytes, file: path)
    }

    /// Every tensor of a file: the members of an .npz archive in order, else the one tensor.
    public static func readAll(_ path: String) throws -> [(name: String, tensor: Tensor)] {
        guard path.hasSuffix(".npz") else { return [try read(path)] }
        return try NumPyArchive.decode(try ONNXImporter.readFile(path, limit: maxFileBytes, what: "tensor archive"), file: path)
    }

    /// Serializes a tensor in the format the extension names.
    public static func encode(_ tensor: Tensor, name: String, forPath path: String) throws -> [UInt8] {
        path.hasSuffix(".npy") ? try NumPy.encode(tensor) : try encodeTensorProto(tensor, name: name)
    }

    /// Serializes a TensorProto with raw_data (string tensors use string_data).
    public static func encodeTensorProto(_ tensor: Tensor, name: String) throws -> [UInt8] {
        var proto = Onnx__TensorProto()
        onnx__tensor_proto__init(&proto)
        var dims = tensor.shape.map { Int64($0) }
        var raw = tensor.dataType == .string ? [] : try tensor.littleEndianBytes()
        var nameBytes = Array(name.utf8CString)
        // String elements live back to back in one buffer; each binary points into it.
        let strings: [[UInt8]] = tensor.dataType == .string ? tensor.strings.map { Array($0.utf8) } : []
        var stringBytes: [UInt8] = strings.flatMap { $0 } + [0]
        return dims.withUnsafeMutableBufferPointer { dimsPtr in
            raw.withUnsafeMutableBufferPointer { rawPtr in
                nameBytes.withUnsafeMutableBufferPointer { namePtr in
                    stringBytes.withUnsafeMutableBufferPointer { stringPtr in
                        var offset = 0
                        var binaries: [ProtobufCBinaryData] = strings.map { s in
                            defer { offset += s.count }
                            return ProtobufCBinaryData(len: s.count, data: stringPtr.baseAddress! + offset)
                        }
                        return binaries.withUnsafeMutableBufferPointer { binPtr in
                            proto.n_dims = dimsPtr.count
                            proto.dims = dimsPtr.baseAddress
                            proto.has_data_type = 1
                            proto.data_type = tensor.dataType.rawValue
                            proto.name = namePtr.baseAddress
                            if tensor.dataType == .string {
                                proto.n_string_data = binPtr.count
                                proto.string_data = binPtr.baseAddress
                            } else {
                                proto.has_raw_data = 1
                                proto.raw_data = ProtobufCBinaryData(len: rawPtr.count, data: rawPtr.baseAddress)
                            }
                            let size = onnx__tensor_proto__get_packed_size(&proto)
                            var out = [UInt8](repeating: 0, count: size)
                            _ = out.withUnsafeMutableBufferPointer { onnx__tensor_proto__pack(&proto, $0.baseAddress) }
                            return out
                        }
                    }
                }
            }
        }
    }
}

/// The NumPy `.npy` format (versions 1–3), little- or big-endian, C or Fortran order.
public enum NumPy {
    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]

    public static func decode(_ bytes: [UInt8], file: String) throws -> Tensor {
        func fail(_ reason: String) -> AnvilError { .invalidTensor(name: file, reason: reason) }
        guard bytes.count >= 10, Array(bytes[0..<6]) == magic else { throw fail("not a NumPy .npy file (bad magic)") }
        let major = bytes[6]
        let headerLength: Int, start: Int
        switch major {
        case 1:
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8; start = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw fail("truncated header") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24; start = 12
        default: throw fail(".npy version \(major) is not supported")
        }
        guard start + headerLength <= bytes.count else { throw fail("truncated header") }
        let header = String(decoding: bytes[start..<(start + headerLength)], as: UTF8.self)
        guard let descr = field(header, "descr"), let order = field(header, "fortran_order"), let shapeText = field(header, "shape") else {
            throw fail("header lacks descr, fortran_order or shape: \(header)")
        }
        let typeCode = descr.trimmingCharacters(in: CharacterSet(charactersIn: "'\""))
        guard typeCode.count >= 2 else { throw fail("unknown dtype '\(typeCode)'") }
        let endian = typeCode.first!
        let kind = String(typeCode.dropFirst())
        let types: [String: DataType] = ["f4": .float, "f8": .double, "f2": .float16, "i1": .int8, "i2": .int16, "i4": .int32,
                                         "i8": .int64, "u1": .uint8, "u2": .uint16, "u4": .uint32, "u8": .uint64, "b1": .bool]
        guard let type = types[kind], "<>|=".contains(endian) else { throw fail("dtype '\(typeCode)' is not supported") }
        let dims = shapeText.trimmingCharacters(in: CharacterSet(charactersIn: "()")).split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        var shape: [Int] = []
        for d in dims {
            guard let v = Int(d), v >= 0 else { throw fail("invalid shape \(shapeText)") }
            shape.append(v)
        }
        guard let n = ShapeMath.elementCount(shape) else { throw fail("shape \(shape) is too large") }
        let dataStart = start + headerLength
        var data = Array(bytes[dataStart...])
        guard data.count == n * type.byteSize else {
            throw fail("shape \(shape) of \(type) needs \(n * type.byteSize) bytes, the file holds \(data.count)")
        }
        if endian == ">" && type.byteSize > 1 {
            let w = type.byteSize
            for i in 0..<n { data[(i * w)..<((i + 1) * w)].reverse() }
        }
        let fortran = order.hasPrefix("True")
        let t = try data.withUnsafeBytes { try Tensor.fromLittleEndian(type, shape: fortran ? shape.reversed() : shape, bytes: $0, name: file) }
        if fortran && shape.count > 1 {
            return try AnvilCoreTranspose.reverseAxes(t)
        }
        return t
    }

    /// Value text of a key in the header dict.
    static func field(_ header: String, _ key: String) -> String? {
        guard let r = header.range(of: "'\(key)'") else { return nil }
        var rest = header[r.upperBound...].drop { $0 == " " || $0 == ":" }
        if rest.first == "(" {
            guard let close = rest.firstIndex(of: ")") else { return nil }
            return String(rest[...close])
        }
        rest = rest.prefix { $0 != "," && $0 != "}" }
        return String(rest).trimmingCharacters(in: .whitespaces)
    }

    public static func encode(_ t: Tensor) throws -> [UInt8] {
        let codes: [DataType: String] = [.float: "<f4", .double: "<f8", .float16: "<f2", .int8: "|i1", .int16: "<i2", .int32: "<i4",
                                         .int64: "<i8", .uint8: "|u1", .uint16: "<u2", .uint32: "<u4", .uint64: "<u8", .bool: "|b1"]
        guard let code = codes[t.dataType] else {
            throw AnvilError.invalidTensor(name: "", reason: "\(t.dataType) tensors cannot be written as .npy (use .pb)")
        }
        let shape = t.shape.count == 1 ? "(\(t.shape[0]),)" : "(\(t.shape.map(String.init).joined(separator: ", ")))"
        var header = "{'descr': '\(code)', 'fortran_order': False, 'shape': \(shape), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var out = magic + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        out += Array(header.utf8)
        out += try t.littleEndianBytes()
        return out
    }
}

/// Reverses all axes (Fortran-order arrays read as C order).
enum AnvilCoreTranspose {
    static func reverseAxes(_ t: Tensor) throws -> Tensor {
        let outShape = Array(t.shape.reversed())
        let inStrides = ShapeMath.strides(t.shape)
        var idx: [Int] = []
        idx.reserveCapacity(t.count)
        var index = [Int](repeating: 0, count: outShape.count)
        for _ in 0..<t.count {
            var s = 0
            for d in 0..<index.count { s += index[d] * inStrides[outShape.count - 1 - d] }
            idx.append(s)
            var d = outShape.count - 1
            while d >= 0 { index[d] += 1; if index[d] < outShape[d] { break }; index[d] = 0; d -= 1 }
        }
        return try t.gathered(idx, shape: outShape)
    }
}
