import AnvilCore
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The container of an Anvil engine file (format version 2; docs/engine-format.md):
/// a fixed header, a section table, and 64-byte-aligned section payloads. The
/// writer is deterministic; the reader checks every bound, the checksum, the
/// version and the CPU features before anything else reads the payloads.
public struct EngineFile {
    /// Format version this code writes and reads.
    public static let formatVersion: UInt32 = 2
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
    /// Empty for a memory-mapped file, whose sections are read in place (`withSection`).
    public var sections: [(tag: String, bytes: [UInt8])]
    /// The file's bytes and where its sections lie, for files read by `load` or `decode`.
    private var mapped: FileBytes?
    private var mappedSections: [(tag: String, range: Range<Int>)] = []

    /// The bytes of a file read by `load` (mapped) or `decode` (copied, 64-byte aligned):
    /// section buffers stay valid while this object lives.
    public final class FileBytes: @unchecked Sendable {
        public let bytes: UnsafeRawBufferPointer
        private let release: (UnsafeRawBufferPointer) -> Void
        init(_ bytes: UnsafeRawBufferPointer, release: @escaping (UnsafeRawBufferPointer) -> Void) {
            self.bytes = bytes
            self.release = release
        }
        deinit { release(bytes) }
    }

    /// Anvil's version, as engines record their producer and `anvil --version` prints it.
    public static let producerVersion = "0.1"

    public init(producer: String, requiredFeatures: CPUFeatures, sections: [(tag: String, bytes: [UInt8])]) {
        self.producer = producer
        self.requiredFeatures = requiredFeatures
        self.sections = sections
    }

    /// The payload of a section (a copy for files read from bytes).
    public func section(_ tag: String) -> [UInt8]? {
        if let mapped, let r = mappedSections.first(where: { $0.tag == tag })?.range { return [UInt8](mapped.bytes[r]) }
        return sections.first { $0.tag == tag }?.bytes
    }

    /// Calls `body` with a section's payload in place (no copy for files read from bytes); nil when absent.
    public func withSection<R>(_ tag: String, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R? {
        if let mapped, let r = mappedSections.first(where: { $0.tag == tag })?.range {
            return try body(UnsafeRawBufferPointer(rebasing: mapped.bytes[r]))
        }
        guard let bytes = sections.first(where: { $0.tag == tag })?.bytes else { return nil }
        return try bytes.withUnsafeBytes(body)
    }

    /// A section's payload that stays valid while `storage` lives (files read by
    /// `load` or `decode`; nil for files being written, and for absent sections).
    public func stableSection(_ tag: String) -> UnsafeRawBufferPointer? {
        guard let mapped, let r = mappedSections.first(where: { $0.tag == tag })?.range else { return nil }
        return UnsafeRawBufferPointer(rebasing: mapped.bytes[r])
    }

    /// What keeps `stableSection` buffers alive; nil for files being written.
    public var storage: FileBytes? { mapped }

    /// Tags of the sections, in file order.
    public var sectionTags: [String] { mapped != nil ? mappedSections.map(\.tag) : sections.map(\.tag) }

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

    /// `bytes` with the header's file length and checksum made to match them (nothing else
    /// changed): lets the engine fuzzer's mutations reach the sections behind the checksum.
    public static func resealed(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= headerSize, Array(bytes[0..<8]) == magic else { return bytes }
        var out = bytes
        put(UInt64(out.count), at: 48, in: &out)
        put(out.withUnsafeBytes { fileChecksum($0) }, at: 24, in: &out)
        return out
    }

    /// Reads and validates an engine held in memory (`file` names it in errors); the
    /// bytes are copied into a 64-byte-aligned buffer its sections are read from in place.
    public static func decode(_ bytes: UnsafeRawBufferPointer, file: String, hostFeatures: CPUFeatures = .host) throws -> EngineFile {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: alignment)
        if bytes.count > 0 { copy.copyMemory(from: bytes) }
        let owned = FileBytes(UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count])) { _ in copy.deallocate() }
        var (result, table) = try validate(owned.bytes, file: file, hostFeatures: hostFeatures)
        result.mapped = owned
        result.mappedSections = table
        return result
    }

    /// Checks the header, checksum, version, CPU features and section table; returns
    /// the header fields and where each section lies.
    static func validate(_ bytes: UnsafeRawBufferPointer, file: String, hostFeatures: CPUFeatures) throws -> (EngineFile, [(tag: String, range: Range<Int>)]) {
        func fail(_ reason: String) -> AnvilError { .invalidModel(file: file, field: "engine", reason: reason) }
        if bytes.count >= 8, bytes.count < headerSize, Array(bytes[0..<8]) == magic {
            throw fail("truncated: \(bytes.count) bytes, shorter than the \(headerSize)-byte engine header")
        }
        guard bytes.count >= headerSize, Array(bytes[0..<8]) == magic else {
            // ONNX files start with ModelProto field 1 (ir_version), tag byte 0x08.
            throw fail(bytes.first == 0x08 ? "this looks like an ONNX model, not an engine: build one with anvil build"
                                           : "not an Anvil engine file (bad magic)")
        }
        let version: UInt32 = read(bytes, 8)
        guard version == formatVersion else {
            throw fail(version < formatVersion
                ? "was written by an earlier Anvil (engine format \(version); this Anvil reads format \(formatVersion), which records typed layer decisions): rebuild it with this anvil's anvil build"
                : "engine format version \(version) is newer than this Anvil reads (\(formatVersion)): rebuild it with this anvil's anvil build, or use a newer Anvil")
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
        var sections: [(tag: String, range: Range<Int>)] = []
        for i in 0..<count {
            let entry = headerSize + i * sectionEntrySize
            let tag = String(decoding: bytes[entry..<(entry + 8)].prefix { $0 != 0 }, as: UTF8.self)
            let offset: UInt64 = read(bytes, entry + 8), length: UInt64 = read(bytes, entry + 16)
            guard !tag.isEmpty, offset % UInt64(alignment) == 0, offset >= UInt64(headerSize + count * sectionEntrySize),
                  length <= UInt64(bytes.count), offset <= UInt64(bytes.count) - length else {
                throw fail("section \(i) ('\(tag)') lies outside the file")
            }
            sections.append((tag, Int(offset)..<Int(offset + length)))
        }
        return (EngineFile(producer: String(decoding: producerBytes, as: UTF8.self), requiredFeatures: required, sections: []), sections)
    }

    /// Reads an engine file through a memory map, populated up front (one bulk fault
    /// instead of one per page while the checksum and the decoder walk the file).
    public static func load(path: String, hostFeatures: CPUFeatures = .host) throws -> EngineFile {
        guard FileManager.default.fileExists(atPath: path) else { throw AnvilError.io(path: path, reason: "no such file") }
        let data = try mapped(path)
        var (file, table) = try validate(data.bytes, file: path, hostFeatures: hostFeatures)
        file.mapped = data
        file.mappedSections = table
        return file
    }

    /// The file's bytes, memory-mapped (MAP_POPULATE) when possible, read otherwise.
    static func mapped(_ path: String) throws -> FileBytes {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw AnvilError.io(path: path, reason: "cannot be opened (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw AnvilError.io(path: path, reason: "cannot be read (\(String(cString: strerror(errno))))") }
        // A device or pipe has no size to trust (stat says 0 for /dev/zero): engines are files.
        guard info.st_mode & S_IFMT == S_IFREG else { throw AnvilError.io(path: path, reason: "is not a regular file, expected an engine file") }
        let size = Int(info.st_size)
        if size > 0, let p = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0), p != MAP_FAILED {
            return FileBytes(UnsafeRawBufferPointer(start: p, count: size)) { munmap(UnsafeMutableRawPointer(mutating: $0.baseAddress), $0.count) }
        }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw AnvilError.io(path: path, reason: "cannot be read (\(error.localizedDescription))")
        }
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(data.count, 1), alignment: alignment)
        data.copyBytes(to: copy)
        return FileBytes(UnsafeRawBufferPointer(rebasing: copy[0..<data.count])) { _ in copy.deallocate() }
    }

    static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<(offset + MemoryLayout<T>.size), with: $0) }
    }

    static func read<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// The file checksum: FNV-1a-style over little-endian 64-bit words in four lanes
    /// per 4 MiB chunk (chunks hashed in parallel), the chunk hashes then combined in
    /// order; the checksum field (bytes 24..<32) reads as zero. Every change of one
    /// word changes its lane's value, since each step is a bijection.
    static func fileChecksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let chunk = 1 << 22
        let chunks = max(1, (bytes.count + chunk - 1) / chunk)
        let hashes = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: chunks)
        defer { hashes.deallocate() }
        nonisolated(unsafe) let out = hashes
        nonisolated(unsafe) let input = bytes
        DispatchQueue.concurrentPerform(iterations: chunks) { i in
            let start = i * chunk
            out[i] = chunkHash(input, start, min(input.count, start + chunk))
        }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for x in hashes { h = (h ^ x) &* 0x100_0000_01B3 }
        return (h ^ UInt64(bytes.count)) &* 0x100_0000_01B3
    }

    static func chunkHash(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UInt64 {
        let prime: UInt64 = 0x100_0000_01B3
        var lanes: (UInt64, UInt64, UInt64, UInt64) = (0xCBF2_9CE4_8422_2325, 0x84222325CBF29CE4, 0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F)
        func word(_ at: Int) -> UInt64 { at == 24 ? 0 : UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        var p = start
        while p + 32 <= end {
            lanes.0 = (lanes.0 ^ word(p)) &* prime
            lanes.1 = (lanes.1 ^ word(p + 8)) &* prime
            lanes.2 = (lanes.2 ^ word(p + 16)) &* prime
            lanes.3 = (lanes.3 ^ word(p + 24)) &* prime
            p += 32
        }
        var h = lanes.0
        for x in [lanes.1, lanes.2, lanes.3] { h = (h ^ x) &* prime }
        while p < end {
            h = (h ^ UInt64((24..<32).contains(p) ? 0 : bytes[p])) &* prime
            p += 1
        }
        return h
    }
}
