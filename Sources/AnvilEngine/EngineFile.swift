import AnvilCore
import Foundation

/// The container of an Anvil engine file (format version 1; docs/engine-format.md):
/// a fixed header, a section table, and 64-byte-aligned section payloads. The
/// writer is deterministic; the reader checks every bound, the checksum, the
/// version and the CPU features before anything else reads the payloads.
public struct EngineFile {
    /// Format version this code writes and reads.
    public static let formatVersion: UInt32 = 1
    /// "\x89ANVIL\r\n": the high byte and the line endings catch text-mode transfers.
    public static let magic: [UInt8] = [0x89, 0x41, 0x4E, 0x56, 0x49, 0x4C, 0x0D, 0x0A]
    static let headerSize = 64
    static let sectionEntrySize = 32
    static let alignment = 64
    static let maxSections = 64

    /// Anvil version that wrote the file.
    public var producer: String
    /// CPU features the engine's kernels need.
    public var requiredFeatures: CPUFeatures
    /// Sections by four-to-eight character tag ("META", "LAYERS", "WEIGHTS" …), in file order.
    public var sections: [(tag: String, bytes: [UInt8])]

    public init(producer: String, requiredFeatures: CPUFeatures, sections: [(tag: String, bytes: [UInt8])]) {
        self.producer = producer
        self.requiredFeatures = requiredFeatures
        self.sections = sections
    }

    /// The payload of a section.
    public func section(_ tag: String) -> [UInt8]? { sections.first { $0.tag == tag }?.bytes }

    /// Serializes the file: equal contents give byte-identical output.
    public func encoded() throws -> [UInt8] {
        guard sections.count <= Self.maxSections else { throw AnvilError.invalidArgument("an engine holds at most \(Self.maxSections) sections") }
        for s in sections where s.tag.utf8.count > 8 || s.tag.isEmpty {
            throw AnvilError.invalidArgument("section tag '\(s.tag)' must be 1 to 8 bytes")
        }
        let tableEnd = Self.headerSize + sections.count * Self.sectionEntrySize
        var offsets: [Int] = []
        var position = Self.align(tableEnd)
        for s in sections {
            offsets.append(position)
            position = Self.align(position + s.bytes.count)
        }
        var out = [UInt8](repeating: 0, count: position)
        for (index, (s, offset)) in zip(sections, offsets).enumerated() {
            let tag = Array(s.tag.utf8)
            let entry = Self.headerSize + index * Self.sectionEntrySize
            out.replaceSubrange(entry..<(entry + tag.count), with: tag)
            Self.put(UInt64(offset), at: entry + 8, in: &out)
            Self.put(UInt64(s.bytes.count), at: entry + 16, in: &out)
            out.replaceSubrange(offset..<(offset + s.bytes.count), with: s.bytes)
        }
        out.replaceSubrange(0..<8, with: Self.magic)
        Self.put(UInt32(Self.formatVersion), at: 8, in: &out)
        Self.put(UInt32(sections.count), at: 12, in: &out)
        Self.put(requiredFeatures.rawValue, at: 16, in: &out)
        let producerBytes = Array(producer.utf8.prefix(16))
        out.replaceSubrange(32..<(32 + producerBytes.count), with: producerBytes)
        Self.put(UInt64(out.count), at: 48, in: &out)
        Self.put(out.withUnsafeBytes { Self.fileChecksum($0) }, at: 24, in: &out)
        return out
    }

    /// Reads and validates an engine held in memory (`file` names it in errors).
    public static func decode(_ bytes: UnsafeRawBufferPointer, file: String, hostFeatures: CPUFeatures = .host) throws -> EngineFile {
        func fail(_ reason: String) -> AnvilError { .invalidModel(file: file, field: "engine", reason: reason) }
        guard bytes.count >= headerSize, Array(bytes[0..<8]) == magic else {
            // ONNX files start with ModelProto field 1 (ir_version), tag byte 0x08.
            throw fail(bytes.first == 0x08 ? "this looks like an ONNX model, not an engine: build one with anvil build"
                                           : "not an Anvil engine file (bad magic)")
        }
        let version: UInt32 = read(bytes, 8)
        guard version == formatVersion else {
            throw fail("engine format version \(version) is not supported by this Anvil (it reads version \(formatVersion)): rebuild it with anvil build")
        }
        let total: UInt64 = read(bytes, 48)
        guard total == UInt64(bytes.count) else {
            throw fail("the file has \(bytes.count) bytes but its header says \(total) (truncated or padded)")
        }
        let stored: UInt64 = read(bytes, 24)
        guard stored == fileChecksum(bytes) else { throw fail("checksum mismatch: the file is corrupt") }
        let required = CPUFeatures(rawValue: read(bytes, 16))
        let missing = CPUFeatures(rawValue: required.rawValue & ~hostFeatures.rawValue)
        guard missing.isEmpty else {
            throw fail("engine needs \(missing); this CPU lacks it: rebuild it here with anvil build")
        }
        let count = Int(read(bytes, 12) as UInt32)
        guard count <= maxSections, headerSize + count * sectionEntrySize <= bytes.count else { throw fail("section table of \(count) entries does not fit") }
        let producerBytes = bytes[32..<48].prefix { $0 != 0 }
        var sections: [(String, [UInt8])] = []
        for i in 0..<count {
            let entry = headerSize + i * sectionEntrySize
            let tag = String(decoding: bytes[entry..<(entry + 8)].prefix { $0 != 0 }, as: UTF8.self)
            let offset: UInt64 = read(bytes, entry + 8), length: UInt64 = read(bytes, entry + 16)
            guard !tag.isEmpty, offset % UInt64(alignment) == 0, offset >= UInt64(headerSize + count * sectionEntrySize),
                  length <= UInt64(bytes.count), offset <= UInt64(bytes.count) - length else {
                throw fail("section \(i) ('\(tag)') lies outside the file")
            }
            sections.append((tag, Array(bytes[Int(offset)..<Int(offset + length)])))
        }
        return EngineFile(producer: String(decoding: producerBytes, as: UTF8.self), requiredFeatures: required, sections: sections)
    }

    /// Reads an engine file through a memory map.
    public static func load(path: String, hostFeatures: CPUFeatures = .host) throws -> EngineFile {
        guard FileManager.default.fileExists(atPath: path) else { throw AnvilError.io(path: path, reason: "no such file") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw AnvilError.io(path: path, reason: "cannot be read (\(error.localizedDescription))")
        }
        return try data.withUnsafeBytes { try decode($0, file: path, hostFeatures: hostFeatures) }
    }

    static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<(offset + MemoryLayout<T>.size), with: $0) }
    }

    static func read<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// FNV-1a 64-bit over the whole file, the checksum field (bytes 24..<32) read as zero.
    static func fileChecksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for (i, b) in bytes.enumerated() { h = (h ^ UInt64((24..<32).contains(i) ? 0 : b)) &* 0x100_0000_01B3 }
        return h
    }
}
