import AnvilCore
import Foundation

/// A graph's constants, made into tensors only when something asks for them.
///
/// An engine file's constants stay in its mapping: plain ones are decoded on first
/// use, and weights the file holds only prepacked (for oneDNN kernels, which use
/// them in place) are reordered back to plain only if a layer needs them so. Safe
/// to share between threads.
public final class ConstantStore: @unchecked Sendable {
    /// Where a constant's values are.
    public enum Source {
        case tensor(Tensor)
        /// Little-endian bytes (in a mapped file), decoded on first use.
        case bytes(UnsafeRawBufferPointer)
        /// Only prepacked weights (`packed`) hold the values.
        case packed
    }

    struct Entry { let type: DataType; let shape: [Int]; let source: Source }

    /// The constants' names (with an enclosing scope's, for a chained store).
    public let names: [String]
    private let entries: [String: Entry]
    /// For a chained store: the store whose constants come first (its decoded tensors shared,
    /// not decoded again) and the enclosing scope's, looked up after them (a control-flow
    /// body planned on its own sees the constants of the graphs around it).
    private let local: ConstantStore?
    private let parent: ConstantStore?
    private let packedByName: [String: [PackedWeights]]
    /// Keeps the memory the sources point into alive (an engine file's mapping).
    private let owner: AnyObject?
    private let lock = NSLock()
    private var made: [String: Tensor] = [:]
    /// Constants unpacked or realigned into store-owned memory (`stableBytes`, `alignedBytes`).
    private var unpackedBytes: [String: UnsafeMutableRawBufferPointer] = [:]
    private var unpackEngine: DNNLEngine?
    /// `holdsNonFinite`'s answers so far.
    private var nonFinite: [String: Bool] = [:]

    /// Constants held as tensors.
    public convenience init(_ tensors: [(name: String, value: Tensor)]) {
        try! self.init(tensors.map { ($0.name, $0.value.dataType, $0.value.shape, .tensor($0.value)) }, packed: [], owner: nil)
    }

    /// Constants from an engine file; checks that every byte range fits its shape and
    /// that every constant held only prepacked has weights it can be unpacked from.
    public init(_ constants: [(name: String, type: DataType, shape: [Int], source: Source)], packed: [PackedWeights], owner: AnyObject?) throws {
        var entries: [String: Entry] = [:]
        var names: [String] = []
        var byName: [String: [PackedWeights]] = [:]
        for p in packed { byName[p.constant, default: []].append(p) }
        for c in constants where entries[c.name] == nil {
            guard let n = ShapeMath.elementCount(c.shape) else { throw AnvilError.invalidTensor(name: c.name, reason: "shape \(c.shape) is invalid") }
            switch c.source {
            case .tensor: break
            case .bytes(let b):
                guard c.type != .string, b.count == n * c.type.byteSize else {
                    throw AnvilError.invalidTensor(name: c.name, reason: "has \(b.count) bytes for \(n) \(c.type) values")
                }
            case .packed:
                // Its weights are checked with all the others below.
                guard byName[c.name]?.contains(where: \.isUnpackable) == true else {
                    throw AnvilError.invalidTensor(name: c.name, reason: "has no values and no prepacked weights it can be read back from")
                }
            }
            entries[c.name] = Entry(type: c.type, shape: c.shape, source: c.source)
            names.append(c.name)
        }
        for p in packed {
            guard let e = entries[p.constant] else { throw AnvilError.invalidTensor(name: p.constant, reason: "prepacked weights of an unknown constant") }
            if let problem = p.problem(type: e.type, shape: e.shape) { throw AnvilError.invalidTensor(name: p.constant, reason: "prepacked weights \(problem)") }
        }
        self.names = names
        self.entries = entries
        self.packedByName = byName
        self.owner = owner
        self.local = nil
        self.parent = nil
    }

    /// `local`'s constants, then `parent`'s (and its parents') for names `local` lacks; both
    /// stores are consulted, nothing is copied or decoded again.
    public init(chaining local: ConstantStore, to parent: ConstantStore) {
        entries = [:]
        packedByName = [:]
        owner = nil
        self.local = local
        self.parent = parent
        let own = Set(local.names)
        names = local.names + parent.names.filter { !own.contains($0) }
    }

    /// The store holding `name` for a chained store (nil: look in this store's own entries).
    private func holder(_ name: String) -> ConstantStore? {
        guard let local, let parent else { return nil }
        return local.contains(name) ? local : parent
    }

    public var count: Int { names.count }
    public func contains(_ name: String) -> Bool { holder(name)?.contains(name) ?? (entries[name] != nil) }
    public func type(of name: String) -> (DataType, [Int])? { holder(name).map { $0.type(of: name) } ?? entries[name].map { ($0.type, $0.shape) } }

    /// Every prepacked weight the store holds (its own, or a chained store's first one's).
    public var packed: [PackedWeights] { local?.packed ?? names.flatMap { packedByName[$0] ?? [] } }
    /// Whether the constant's plain values are absent (only prepacked).
    public func isPackedOnly(_ name: String) -> Bool {
        if let holder = holder(name) { return holder.isPackedOnly(name) }
        guard let e = entries[name] else { return false }
        if case .packed = e.source { return true }
        return false
    }

    /// The constant as a tensor (decoded or unpacked on first use); nil when there is none by that name.
    public subscript(name: String) -> Tensor? { try? tensor(name) }

    public func tensor(_ name: String) throws -> Tensor? {
        if let holder = holder(name) { return try holder.tensor(name) }
        guard let e = entries[name] else { return nil }
        if case .tensor(let t) = e.source { return t }
        lock.lock()
        if let t = made[name] { lock.unlock(); return t }
        lock.unlock()
        let t: Tensor
        switch e.source {
        case .tensor(let x): t = x
        case .bytes(let b): t = try Tensor.fromLittleEndian(e.type, shape: e.shape, bytes: b, name: name)
        case .packed: t = try packedByName[name]!.first(where: \.isUnpackable)!.unpacked(shape: e.shape, engine: try engineForUnpacking())
        }
        lock.lock()
        defer { lock.unlock() }
        if let existing = made[name] { return existing }
        made[name] = t
        return t
    }

    /// The constant's little-endian bytes where they stay valid as long as the store
    /// (an engine file's mapping): kernels read them in place. Nil for other sources.
    public func stableBytes(_ name: String) -> UnsafeRawBufferPointer? {
        if let holder = holder(name) { return holder.stableBytes(name) }
        guard let e = entries[name] else { return nil }
        if case .bytes(let b) = e.source { return b }
        if case .packed = e.source { return try? materialized(name) }
        return nil
    }

    /// The constant's bytes aligned to its element size, where plans read them in place: the
    /// file's bytes when they are aligned, else a copy the store makes once (constants lie at
    /// any offset inside an engine's graph section; each plan of a dynamic engine copied
    /// BERT's 89 MB embedding table for itself).
    public func alignedBytes(_ name: String) -> UnsafeRawBufferPointer? {
        guard let (type, _) = type(of: name), let stable = stableBytes(name), let base = stable.baseAddress else { return nil }
        if Int(bitPattern: base) % max(type.byteSize, 1) == 0 { return stable }
        if let holder = holder(name) { return holder.alignedBytes(name) }
        return try? materialized(name)
    }

    /// Whether a constant holds NaN or ±∞, found once per store. Weights held only
    /// prepacked are read in their packed layout, whose padding is zero.
    public func holdsNonFinite(_ name: String) -> Bool {
        if let holder = holder(name) { return holder.holdsNonFinite(name) }
        guard let e = entries[name], [.float, .double, .float16, .bfloat16].contains(e.type) else { return false }
        lock.lock()
        if let known = nonFinite[name] { lock.unlock(); return known }
        lock.unlock()
        let found: Bool
        switch e.source {
        case .bytes(let b) where e.type == .float: found = b.baseAddress.map { NonFinite.nonFiniteFloats($0, count: b.count / 4) } ?? false
        case .packed where e.type == .float:
            let data = packedByName[name]?.first?.data
            found = data?.baseAddress.map { NonFinite.nonFiniteFloats($0, count: data!.count / 4) } ?? false
        default: found = (try? tensor(name)).flatMap { $0 }.map(NonFinite.anyIn) ?? false
        }
        lock.lock()
        nonFinite[name] = found
        lock.unlock()
        return found
    }

    /// A constant unpacked or copied once into 64-byte-aligned memory the store keeps.
    private func materialized(_ name: String) throws -> UnsafeRawBufferPointer? {
        lock.lock()
        if let b = unpackedBytes[name] { lock.unlock(); return UnsafeRawBufferPointer(b) }
        lock.unlock()
        let copy: UnsafeMutableRawBufferPointer
        if case .bytes(let source)? = entries[name]?.source {
            copy = .allocate(byteCount: max(source.count, 1), alignment: 64)
            if let base = source.baseAddress, source.count > 0 { copy.baseAddress!.copyMemory(from: base, byteCount: source.count) }
        } else {
            guard let t = try tensor(name), t.dataType != .string else { return nil }
            let bytes = try t.littleEndianBytes()
            copy = .allocate(byteCount: max(bytes.count, 1), alignment: 64)
            copy.copyBytes(from: bytes)
        }
        let count = entries[name].map { e in (ShapeMath.elementCount(e.shape) ?? 0) * e.type.byteSize } ?? 0
        lock.lock()
        defer { lock.unlock() }
        if let b = unpackedBytes[name] { copy.deallocate(); return UnsafeRawBufferPointer(b) }
        let view = UnsafeMutableRawBufferPointer(rebasing: copy[0..<min(count, copy.count)])
        unpackedBytes[name] = view
        return UnsafeRawBufferPointer(view)
    }

    deinit {
        for b in unpackedBytes.values { b.baseAddress.map { UnsafeMutableRawPointer($0).deallocate() } }
    }

    /// The constant as a oneDNN kernel takes it: shape, prepacked copies, plain values on demand.
    public func weights(_ name: String) -> KernelWeights? {
        if let holder = holder(name) { return holder.weights(name) }
        guard let e = entries[name] else { return nil }
        return KernelWeights(name: name, dataType: e.type, shape: e.shape, packed: packedByName[name] ?? []) { [self] in
            guard let t = try tensor(name) else { throw AnvilError.invalidTensor(name: name, reason: "no such constant") }
            return t
        }
    }

    private func engineForUnpacking() throws -> DNNLEngine {
        lock.lock()
        defer { lock.unlock() }
        if let unpackEngine { return unpackEngine }
        let e = try DNNLEngine()
        unpackEngine = e
        return e
    }
}
