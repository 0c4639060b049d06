import AnvilCore
import AnvilKernels

/// The WEIGHTS section: prepacked weights of the engine's oneDNN kernels, each
/// 64-byte aligned and used in place from the mapped file (docs/engine-format.md).
///
/// Layout: the oneDNN version (3 × u64) the layouts belong to, the entry count,
/// then per entry the constant's name, its plain layout code, its packed layout
/// code (`LayoutCode`), and the offset (from the section start) and length of
/// its bytes; then the bytes, each at a 64-byte-aligned offset.
enum WeightsSection {
    static func encode(_ weights: [PackedWeights]) -> [UInt8] {
        var w = EngineCodec.Writer()
        let version = DNNLVersion.current
        for v in [version.major, version.minor, version.patch] { w.int(v) }
        w.int(weights.count)
        func code(_ c: LayoutCode) { w.int(c.values.count); for v in c.values { w.u64(UInt64(bitPattern: v)) } }
        // The table first, with each entry's offset filled in once the table's end is known.
        var offsetFields: [Int] = []
        for p in weights {
            w.string(p.constant)
            code(p.user)
            code(p.packed)
            offsetFields.append(w.bytes.count)
            w.int(0); w.int(p.data.count)
        }
        for (field, p) in zip(offsetFields, weights) {
            w.bytes += [UInt8](repeating: 0, count: align(w.bytes.count) - w.bytes.count)
            withUnsafeBytes(of: UInt64(w.bytes.count).littleEndian) { w.bytes.replaceSubrange(field..<(field + 8), with: $0) }
            w.bytes += p.data
        }
        return w.bytes
    }

    /// Reads the entries; their data points into `bytes` (which must outlive them).
    static func decode(_ bytes: UnsafeRawBufferPointer, file: String) throws -> [PackedWeights] {
        var r = EngineCodec.Reader(bytes: bytes, file: file, section: "WEIGHTS")
        let version = (try r.int(), try r.int(), try r.int())
        let here = DNNLVersion.current
        guard version == (here.major, here.minor, here.patch) else {
            throw AnvilError.invalidModel(file: file, field: "engine", reason: "its weights are packed for oneDNN \(version.0).\(version.1).\(version.2); "
                                          + "this runtime uses oneDNN \(here.major).\(here.minor).\(here.patch): rebuild it here with anvil build")
        }
        func code() throws -> LayoutCode {
            let n = try r.count(minimum: 8)
            guard n <= 96 else { throw r.fail("layout code of \(n) values is impossible") }
            return LayoutCode(values: try (0..<n).map { _ in Int64(bitPattern: try r.u64()) })
        }
        var result: [PackedWeights] = []
        for _ in 0..<(try r.count(minimum: 40)) {
            let name = try r.string(), user = try code(), packed = try code()
            let offset = try r.int(), length = try r.int()
            guard offset >= 0, length >= 0, offset % 64 == 0, offset <= bytes.count, length <= bytes.count - offset else {
                throw r.fail("weights of '\(name)' at \(offset), \(length) bytes, lie outside the section")
            }
            result.append(PackedWeights(constant: name, user: user, packed: packed, data: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)])))
        }
        return result
    }

    static func align(_ n: Int) -> Int { (n + 63) / 64 * 64 }
}

/// The MEMPLAN section: the activation memory plan for the build-time shapes —
/// the arena size, then per buffer the first value it holds, its bytes and offset.
enum MemoryPlanSection {
    static func encode(_ plan: StoredMemoryPlan) -> [UInt8] {
        var w = EngineCodec.Writer()
        w.int(plan.arenaBytes)
        w.int(plan.buffers.count)
        for (name, b) in plan.buffers.sorted(by: { $0.key < $1.key }) {
            w.string(name); w.int(b.bytes); w.int(b.offset)
        }
        return w.bytes
    }

    static func decode(_ bytes: UnsafeRawBufferPointer, file: String) throws -> StoredMemoryPlan {
        var r = EngineCodec.Reader(bytes: bytes, file: file, section: "MEMPLAN")
        var plan = StoredMemoryPlan(arenaBytes: try r.int(), buffers: [:])
        for _ in 0..<(try r.count(minimum: 24)) {
            let name = try r.string(), size = try r.int(), offset = try r.int()
            plan.buffers[name] = .init(bytes: size, offset: offset)
        }
        guard r.position == bytes.count else { throw r.fail("\(bytes.count - r.position) bytes after the plan") }
        return plan
    }
}
