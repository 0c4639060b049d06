import AnvilCore
import CZlib

/// NumPy's `.npz`: a zip archive of `.npy` members, stored (numpy.savez) or deflated
/// (numpy.savez_compressed), zip64 included. Every size and offset is checked against the
/// archive before it is used, and what inflating may produce against the memory policy.
public enum NumPyArchive {
    /// Most members an archive may have.
    static let maxMembers = 1 << 16

    /// The arrays in member order, named as numpy names them (the member name without ".npy":
    /// the keyword, or arr_0, arr_1 … for positional arrays).
    public static func decode(_ bytes: [UInt8], file: String) throws -> [(name: String, tensor: Tensor)] {
        func fail(_ reason: String) -> AnvilError { .invalidModel(file: file, field: "npz", reason: reason) }
        func u16(_ at: Int) throws -> Int {
            guard at >= 0, at + 2 <= bytes.count else { throw fail("truncated: a field at byte \(at) lies past the end") }
            return Int(bytes[at]) | Int(bytes[at + 1]) << 8
        }
        func u32(_ at: Int) throws -> Int { try u16(at) | (try u16(at + 2)) << 16 }
        func u64(_ at: Int) throws -> Int {
            let low = try u32(at), high = try u32(at + 4)
            guard high < 1 << 30 else { throw fail("a 64-bit size or offset at byte \(at) is beyond any file") }
            return low | high << 32
        }
        // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
        guard bytes.count >= 22 else {
            throw fail(bytes.starts(with: NumPy.magic) ? "this is a .npy file, not a .npz archive" : "not a .npz archive (too short for a zip file)")
        }
        var end = -1
        for at in stride(from: bytes.count - 22, through: max(0, bytes.count - 22 - 65535), by: -1)
        where bytes[at] == 0x50 && bytes[at + 1] == 0x4B && bytes[at + 2] == 5 && bytes[at + 3] == 6 {
            end = at
            break
        }
        guard end >= 0 else { throw fail("not a .npz archive (no zip end-of-directory record)") }
        var count = try u16(end + 10), directorySize = try u32(end + 12), directory = try u32(end + 16)
        if count == 0xFFFF || directorySize == 0xFFFF_FFFF || directory == 0xFFFF_FFFF {
            // Zip64: the locator just before points at the zip64 end record.
            let locator = end - 20
            guard locator >= 0, try u32(locator) == 0x0706_4B50 else { throw fail("zip64 archive without its locator") }
            let record = try u64(locator + 8)
            guard try u32(record) == 0x0606_4B50 else { throw fail("zip64 end record not where its locator says") }
            (count, directorySize, directory) = (try u64(record + 32), try u64(record + 40), try u64(record + 48))
        }
        guard count <= maxMembers else { throw fail("\(count) members, more than the \(maxMembers) accepted") }
        guard directory <= bytes.count, directorySize <= bytes.count - directory else { throw fail("the central directory lies outside the file") }
        var arrays: [(name: String, tensor: Tensor)] = []
        var at = directory
        for index in 0..<count {
            guard try u32(at) == 0x0201_4B50 else { throw fail("central directory entry \(index) is damaged") }
            let method = try u16(at + 10), nameLength = try u16(at + 28), extraLength = try u16(at + 30), commentLength = try u16(at + 32)
            var compressed = try u32(at + 20), size = try u32(at + 24), local = try u32(at + 42)
            guard at + 46 + nameLength <= bytes.count else { throw fail("entry \(index)'s name lies past the end") }
            let rawName = String(decoding: bytes[(at + 46)..<(at + 46 + nameLength)], as: UTF8.self)
            // Zip64 sizes and offset, in this order, for the fields that say 0xFFFFFFFF.
            var extra = at + 46 + nameLength
            let extraEnd = extra + extraLength
            while extra + 4 <= extraEnd {
                let id = try u16(extra), length = try u16(extra + 2)
                if id == 1 {
                    var field = extra + 4
                    if size == 0xFFFF_FFFF { size = try u64(field); field += 8 }
                    if compressed == 0xFFFF_FFFF { compressed = try u64(field); field += 8 }
                    if local == 0xFFFF_FFFF { local = try u64(field) }
                }
                extra += 4 + length
            }
            at = extraEnd + commentLength
            let name = rawName.hasSuffix(".npy") ? String(rawName.dropLast(4)) : rawName
            let member = "\(file)[\(name)]"
            guard try u32(local) == 0x0403_4B50 else { throw fail("member '\(name)' has no local header where the directory says") }
            let start = local + 30 + (try u16(local + 26)) + (try u16(local + 28))
            guard start <= bytes.count, compressed <= bytes.count - start else { throw fail("member '\(name)' lies past the end of the file") }
            try MemoryPolicy.check(size, for: "member '\(name)' of \(file)")
            let data: [UInt8]
            switch method {
            case 0:
                guard compressed == size else { throw fail("stored member '\(name)' has \(compressed) bytes but says \(size)") }
                data = Array(bytes[start..<(start + size)])
            case 8: data = try inflate(bytes[start..<(start + compressed)], size: size, what: member)
            default: throw fail("member '\(name)' uses zip compression method \(method); numpy writes only stored (0) and deflated (8) members")
            }
            guard !arrays.contains(where: { $0.name == name }) else { throw fail("two members are named '\(name)'") }
            arrays.append((name, try NumPy.decode(data, file: member)))
        }
        return arrays
    }

    /// Raw deflate data inflated to exactly `size` bytes.
    static func inflate(_ input: ArraySlice<UInt8>, size: Int, what: String) throws -> [UInt8] {
        func fail(_ reason: String) -> AnvilError { .invalidModel(file: what, field: "npz", reason: reason) }
        var output = [UInt8](repeating: 0, count: size)
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw fail("zlib could not start") }
        defer { inflateEnd(&stream) }
        var input = Array(input)
        let status: Int32 = input.withUnsafeMutableBufferPointer { i in
            output.withUnsafeMutableBufferPointer { o in
                var consumed = 0, produced = 0
                while true {
                    // zlib counts in 32-bit units: at most 1 GiB in and out per call.
                    let inChunk = min(i.count - consumed, 1 << 30), outChunk = min(o.count - produced, 1 << 30)
                    stream.next_in = i.baseAddress.map { $0 + consumed }
                    stream.avail_in = UInt32(inChunk)
                    stream.next_out = o.baseAddress.map { $0 + produced }
                    stream.avail_out = UInt32(outChunk)
                    let status = CZlib.inflate(&stream, Z_NO_FLUSH)
                    let read = inChunk - Int(stream.avail_in), wrote = outChunk - Int(stream.avail_out)
                    consumed += read
                    produced += wrote
                    if status == Z_STREAM_END { return produced == o.count ? Z_STREAM_END : Z_BUF_ERROR }
                    // Out of input or of room without the end of the stream, or no progress: truncated or too long.
                    if status != Z_OK { return status }
                    if read == 0 && wrote == 0 { return Z_BUF_ERROR }
                }
            }
        }
        guard status == Z_STREAM_END else {
            throw fail(status == Z_BUF_ERROR ? "deflated data does not inflate to its declared \(size) bytes (truncated or longer)"
                                             : "deflated data is damaged (zlib status \(status))")
        }
        return output
    }
}
