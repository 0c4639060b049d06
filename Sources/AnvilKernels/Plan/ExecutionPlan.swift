import AnvilCore
import COneDNN
import Dispatch
import Foundation

/// Why a graph cannot be planned (it then runs on the interpreter).
public struct PlanUnsupported: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

/// Kernels shared by every execution context of an engine: a oneDNN convolution or
/// matmul holds its prepacked weights, so contexts share one per layer and shape.
public final class SharedKernels: @unchecked Sendable {
    private let lock = NSLock()
    private var kernels: [String: AnyObject] = [:]

    public init() {}

    /// The kernel for `key`, made on first request. Making runs outside the lock so
    /// several kernels can be made at once; if two threads race, the first kept wins.
    func kernel<K: AnyObject>(_ key: String, make: () throws -> K) throws -> K {
        lock.lock()
        if let k = kernels[key] as? K { lock.unlock(); return k }
        lock.unlock()
        let made = try make()
        lock.lock()
        defer { lock.unlock() }
        if let k = kernels[key] as? K { return k }
        kernels[key] = made
        return made
    }

    /// Number of kernels held (for reports).
    public var count: Int { lock.lock(); defer { lock.unlock() }; return kernels.count }

    /// The kernels holding constant weights.
    private var weighted: [DNNLWeightedPrimitive] {
        lock.lock()
        defer { lock.unlock() }
        return kernels.values.compactMap { k in
            switch k {
            case let c as DNNLConvolution: c.kernel
            case let m as DNNLMatMul: m.kernel
            case let d as DNNLDeconvolution: d.kernel
            default: nil
            }
        }
    }

    /// The prepacked weights of the kernels made so far that an engine file can
    /// store, one per constant and layout, in a stable order.
    public var storableWeights: [PackedWeights] {
        var seen: [String: PackedWeights] = [:]
        for k in weighted { if let p = k.storable { seen["\(p.constant)|\(p.user.values)|\(p.packed.values)"] = p } }
        return seen.values.sorted { ($0.constant, $0.user, $0.packed) < ($1.constant, $1.user, $1.packed) }
    }

    /// Kernels with constant weights, and how many of them use prepacked weights from
    /// the engine file in place (the others packed theirs when they were made).
    public var weightsInPlace: (inPlace: Int, kernels: Int) {
        let all = weighted
        return (all.filter { !$0.ownsWeights }.count, all.count)
    }
}

/// A memory plan as an engine file stores it: the arena's size and, by the first
/// value each buffer holds, its size and offset. A plan adopts it only after
/// checking that it fits its own buffers and that no two live buffers overlap.
public struct StoredMemoryPlan: Sendable, Equatable {
    public struct Placement: Sendable, Equatable {
        public var bytes: Int
        public var offset: Int
        public init(bytes: Int, offset: Int) { self.bytes = bytes; self.offset = offset }
    }
    public var arenaBytes: Int
    public var buffers: [String: Placement]

    public init(arenaBytes: Int, buffers: [String: Placement]) {
        self.arenaBytes = arenaBytes
        self.buffers = buffers
    }
}

/// A compiled run of a graph for one set of input shapes: every value placed in
/// one activation arena by a liveness-based memory plan (in place where safe),
/// layouts planned so consecutive oneDNN layers exchange blocked tensors with
/// reorders only at boundaries, and every oneDNN primitive created with its
/// memory bound once. A run then makes no allocations except in reference layers.
public final class ExecutionPlan {
    let engine: DNNLEngine
    let shared: SharedKernels
    var values: [String: PlanValue] = [:]
    var steps: [PlanStep] = []
    var graphInputs: [PlanValue] = []
    var graphOutputs: [Either] = []
    enum Either { case value(PlanValue), constant(Tensor) }

    /// Arena buffers: size, live range in steps, assigned offset.
    struct Buffer {
        var bytes: Int; var first: Int; var last: Int; var offset = 0; var names: [String]
        /// Set when the buffer lives inside another (a concat's part): that buffer and the byte offset.
        var parent: (buffer: Int, offset: Int)?
    }
    var buffers: [Buffer] = []
    public private(set) var arenaBytes = 0
    private(set) var arena: UnsafeMutableRawPointer
    private(set) var scratchpad: UnsafeMutableRawPointer
    public private(set) var scratchpadBytes = 0
    private var owned: [UnsafeMutableRawPointer] = []

    // Planning state.
    private let constants: ConstantStore
    private let types: [String: (DataType, [Int])]
    private var lastUse: [String: Int] = [:]
    private var plainCopies: [String: PlanValue] = [:]
    private var layerIndex = 0

    /// Plans `layers` for inputs of the given shapes. `types` gives every value's
    /// element type and shape for these inputs (recorded at build time or observed).
    public init(layers: [Layer], constants: ConstantStore, inputs: [(name: String, type: DataType, shape: [Int])],
                outputs: [String], types: [String: (DataType, [Int])], engine: DNNLEngine, shared: SharedKernels,
                memoryPlan stored: StoredMemoryPlan? = nil) throws {
        self.engine = engine
        self.shared = shared
        self.constants = constants
        self.types = types
        arena = try Self.allocateRegion(64, "activation arena")
        scratchpad = try Self.allocateRegion(64, "scratchpad")
        for (i, l) in layers.enumerated() {
            for name in l.inputs where !name.isEmpty { lastUse[name] = i }
            for a in l.attributes.values {
                switch a {
                case .graph, .graphs: throw PlanUnsupported(reason: "layer '\(l.name)' has subgraphs")
                default: break
                }
            }
        }
        for name in outputs { lastUse[name] = Int.max }
        for input in inputs {
            guard input.type != .string else { throw PlanUnsupported(reason: "input '\(input.name)' holds strings") }
            let v = newValue(input.name, input.type, input.shape)
            buffers[v.buffer].first = -1
            graphInputs.append(v)
        }
        prepareKernels(layers, inputs: inputs)
        for (i, layer) in layers.enumerated() {
            layerIndex = i
            if try !compileFast(layer) { try compileReference(layer) }
        }
        for name in outputs {
            if let t = try constants.tensor(name) { graphOutputs.append(.constant(t)); continue }
            guard let v = values[name] else { throw PlanUnsupported(reason: "output '\(name)' is not produced") }
            let p = try plain(v)
            graphOutputs.append(.value(p))
            if p.buffer >= 0 { buffers[p.buffer].last = Int.max }
        }
        try assignMemory(stored)
        for step in steps { try step.bind(self) }
    }

    deinit {
        free(arena)
        free(scratchpad)
        for p in owned { p.deallocate() }
    }

    // MARK: Running

    /// Runs on inputs already checked against the declared types; `profile` receives
    /// each step's layer, implementation and milliseconds.
    public func run(_ inputs: [String: Tensor], stream: DNNLStream,
                    profile: ((_ layer: String, _ implementation: String, _ milliseconds: Double) -> Void)? = nil) throws -> [Tensor] {
        for v in graphInputs {
            guard let t = inputs[v.name], t.shape == v.shape, t.dataType == v.dataType else {
                throw PlanMismatch(layer: "(inputs)", value: v.name, planned: v.shape, actual: inputs[v.name]?.shape ?? [])
            }
            try store(t, into: v)
        }
        try runSteps(stream: stream, profile: profile)
        return try graphOutputs.map { output in
            switch output {
            case .constant(let t): return t
            case .value(let v): return try tensor(v)
            }
        }
    }

    /// Runs on caller memory: inputs and outputs in declaration order, row-major,
    /// each exactly its planned size in bytes. Makes no heap allocation unless the
    /// plan has reference steps (TensorRT's enqueue on bound buffers).
    public func run(inputs: [UnsafeRawBufferPointer], outputs: [UnsafeMutableRawBufferPointer], stream: DNNLStream) throws {
        guard inputs.count == graphInputs.count, outputs.count == graphOutputs.count else {
            throw AnvilError.invalidArgument("the engine takes \(graphInputs.count) inputs and \(graphOutputs.count) outputs, got \(inputs.count) and \(outputs.count)")
        }
        for (v, buffer) in zip(graphInputs, inputs) {
            guard buffer.count == v.byteCount else {
                throw AnvilError.invalidTensor(name: v.name, reason: "has \(buffer.count) bytes, the plan needs \(v.byteCount) (\(v.dataType) \(v.shape))")
            }
            if let base = buffer.baseAddress { address(v).copyMemory(from: base, byteCount: buffer.count) }
        }
        try runSteps(stream: stream, profile: nil)
        for (output, buffer) in zip(graphOutputs, outputs) {
            switch output {
            case .value(let v):
                guard buffer.count == v.byteCount else {
                    throw AnvilError.invalidTensor(name: v.name, reason: "output buffer has \(buffer.count) bytes, the result has \(v.byteCount)")
                }
                if let base = buffer.baseAddress { base.copyMemory(from: address(v), byteCount: buffer.count) }
            case .constant(let t):
                try t.withHostBytes { raw in
                    guard raw.count == buffer.count else { throw AnvilError.invalidTensor(name: "output", reason: "output buffer has \(buffer.count) bytes, the result has \(raw.count)") }
                    if let base = buffer.baseAddress, let from = raw.baseAddress { base.copyMemory(from: from, byteCount: raw.count) }
                }
            }
        }
    }

    /// Runs every step in order; Swift and reference steps wait for oneDNN's queue first.
    private func runSteps(stream: DNNLStream, profile: ((_ layer: String, _ implementation: String, _ milliseconds: Double) -> Void)?) throws {
        for step in steps {
            let start = profile == nil ? 0 : DispatchTime.now().uptimeNanoseconds
            if !(step is PrimitiveStep) { try stream.wait() }
            try step.run(self, stream: stream)
            if let profile {
                try stream.wait()
                profile(step.layer, step.implementation, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
        }
        try stream.wait()
    }

    /// Executes only the plan's oneDNN primitives, once each, in order: the baseline
    /// of what oneDNN itself costs in a run (its calls allocate their argument maps).
    public func executePrimitivesOnly(stream: DNNLStream) throws {
        for case let step as PrimitiveStep in steps { try step.execute(stream) }
        try stream.wait()
    }

    func address(_ v: PlanValue) -> UnsafeMutableRawPointer {
        if let c = v.constant { return c }
        return arena + buffers[v.buffer].offset + v.offset
    }

    /// A plain value's contents as a tensor (a copy).
    func tensor(_ v: PlanValue) throws -> Tensor {
        try Tensor.fromHostBytes(v.dataType, shape: v.shape, bytes: address(v))
    }

    /// Copies a tensor into a plain value's storage.
    func store(_ t: Tensor, into v: PlanValue) throws {
        let target = address(v)
        try t.withHostBytes { raw in
            guard raw.count == v.byteCount else {
                throw AnvilError.invalidTensor(name: v.name, reason: "has \(raw.count) bytes, planned \(v.byteCount)")
            }
            if let base = raw.baseAddress { target.copyMemory(from: base, byteCount: raw.count) }
        }
    }

    /// The steps as (layer, implementation) pairs, for reports.
    public var stepSummary: [(layer: String, implementation: String)] { steps.map { ($0.layer, $0.implementation) } }

    // MARK: Values and buffers

    private func newValue(_ name: String, _ type: DataType, _ shape: [Int], layout: dnnl_memory_desc_t? = nil) -> PlanValue {
        let v = PlanValue(name: name, dataType: type, shape: shape, layout: layout.flatMap { Self.isPlain($0, shape) ? nil : $0 }, buffer: buffers.count)
        buffers.append(Buffer(bytes: v.byteCount, first: steps.count, last: steps.count, names: [name]))
        values[name] = v
        return v
    }

    /// A view of `source`'s storage (a reshape, a split part, an in-place result).
    private func alias(_ name: String, of source: PlanValue, type: DataType, shape: [Int], layout: dnnl_memory_desc_t? = nil, byteOffset: Int = 0) -> PlanValue {
        let v = PlanValue(name: name, dataType: type, shape: shape, layout: layout.flatMap { Self.isPlain($0, shape) ? nil : $0 },
                          buffer: source.buffer, offset: source.offset + byteOffset)
        v.constant = source.constant
        if v.buffer >= 0 { buffers[v.buffer].names.append(name) }
        values[name] = v
        return v
    }

    static func isPlain(_ d: dnnl_memory_desc_t, _ shape: [Int]) -> Bool {
        guard var p = try? plainDescriptor(shape, .float) else { return false }
        var a = d
        // Compare layouts only: the element type of `d` decides.
        p.data_type = a.data_type
        return anvil_dnnl_md_equal(&a, &p) != 0
    }

    /// Whether nothing reads `v`'s storage after the current layer, so a layer may overwrite it.
    private func dies(_ v: PlanValue) -> Bool {
        guard v.buffer >= 0, buffers[v.buffer].first >= 0 else { return false }
        return buffers[v.buffer].names.allSatisfy { (lastUse[$0] ?? -1) <= layerIndex }
    }

    /// A constant as a plan value (plain, storage owned by the plan).
    private func constantValue(_ name: String, _ t: Tensor) throws -> PlanValue {
        let v = PlanValue(name: name, dataType: t.dataType, shape: t.shape, layout: nil, buffer: -1)
        let bytes = max(v.byteCount, 64)
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        owned.append(p)
        try t.withHostBytes { raw in if let b = raw.baseAddress { p.copyMemory(from: b, byteCount: raw.count) } }
        v.constant = p
        return v
    }

    /// A constant as a plan value: read in place from the engine file's mapping when
    /// it is there (steps never write constants), else copied into plan memory.
    private func constantValue(_ name: String) throws -> PlanValue? {
        #if _endian(little)
        if let (type, shape) = constants.type(of: name), let stable = constants.stableBytes(name), let base = stable.baseAddress {
            let v = PlanValue(name: name, dataType: type, shape: shape, layout: nil, buffer: -1)
            if stable.count == v.byteCount {
                v.constant = UnsafeMutableRawPointer(mutating: base)
                return v
            }
        }
        #endif
        return try constants.tensor(name).map { try constantValue(name, $0) }
    }

    /// Plan-owned float scratch memory (freed with the plan).
    func ownedFloats(_ count: Int) -> UnsafeMutablePointer<Float> {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(count, 16) * 4, alignment: 64)
        owned.append(p)
        return p.assumingMemoryBound(to: Float.self)
    }

    /// `v` in plain layout: itself, or a reordered copy (made once per value).
    func plain(_ v: PlanValue) throws -> PlanValue {
        if v.isPlain { return v }
        if let p = plainCopies[v.name] { return p }
        let p = try reordered(v, to: plainDescriptor(v.shape, v.dataType), name: v.name + "#plain")
        plainCopies[v.name] = p
        return p
    }

    /// `v` in layout `d`: itself or a reordered copy.
    private func inLayout(_ v: PlanValue, _ d: dnnl_memory_desc_t) throws -> PlanValue {
        if try v.stored(as: d) { return v }
        if Self.isPlain(d, v.shape) { return try plain(v) }
        return try reordered(v, to: d, name: v.name + "#\(steps.count)")
    }

    private func reordered(_ v: PlanValue, to d: dnnl_memory_desc_t, name: String) throws -> PlanValue {
        let out = newValue(name, v.dataType, v.shape, layout: d)
        buffers[out.buffer].names.append(v.name)  // lives as long as its source is used
        let primitive = try reorderPrimitive(from: v.descriptor(), to: d, engine: engine)
        steps.append(PrimitiveStep(layer: "reorder " + v.name, primitive: primitive,
                                   arguments: [(DNNL_ARG_FROM, v, try v.descriptor()), (DNNL_ARG_TO, out, d)], implementation: "reorder"))
        return out
    }

    private func type(of name: String) throws -> (DataType, [Int]) {
        guard let t = types[name] else { throw PlanUnsupported(reason: "the shape of '\(name)' is not known") }
        return t
    }

    // MARK: Channel views and in-place concatenation

    /// Where channels [c0, c0 + count) of a batch-1 tensor lie contiguously: the
    /// byte offset and the layout of that part; nil when they are not contiguous.
    func channelRange(_ v: PlanValue, from c0: Int, count: Int) throws -> (Int, dnnl_memory_desc_t)? {
        guard v.shape.count >= 2, v.shape[0] == 1, count > 0, c0 + count <= v.shape[1] else { return nil }
        let spatial = v.shape[2...].reduce(1, *), size = v.dataType.byteSize
        let partShape = [1, count] + v.shape[2...]
        guard let layout = v.layout else { return (c0 * spatial * size, try plainDescriptor(partShape, v.dataType)) }
        guard case .blocked(let b)? = try SwiftKernels.channelLayout(layout, shape: v.shape), c0 % b == 0,
              count % b == 0 || c0 + count == v.shape[1] else { return nil }
        let tags: [dnnl_format_tag_t] = b == 16 ? [dnnl_aBc16b, dnnl_aBcd16b, dnnl_aBcde16b] : [dnnl_aBc8b, dnnl_aBcd8b, dnnl_aBcde8b]
        return ((c0 / b) * spatial * b * size, try memoryDescriptor(partShape, tags[v.shape.count - 3]))
    }

    /// Concatenation along channels with no copy: the parts' buffers are placed
    /// inside the result's, each where its channels go. Applies when every part is
    /// a batch-1 tensor in the same plain or channel-blocked layout, at block
    /// boundaries, in a buffer of its own (or views of one, in order) that no other
    /// part shares and that is not a graph input or a constant.
    func concatenateInPlace(_ parts: [PlanValue], name: String, shape: [Int]) throws -> Bool {
        guard shape[0] == 1, let first = parts.first else { return false }
        let layoutClass: SwiftKernels.ChannelLayout? = try first.layout.map { try SwiftKernels.channelLayout($0, shape: first.shape) } ?? .plain
        switch layoutClass {
        case .plain?, .blocked?: break
        default: return false
        }
        // The result's layout, and where each part's channels start in it.
        let out: dnnl_memory_desc_t
        switch layoutClass! {
        case .blocked(let b):
            let tags: [dnnl_format_tag_t] = b == 16 ? [dnnl_aBc16b, dnnl_aBcd16b, dnnl_aBcde16b] : [dnnl_aBc8b, dnnl_aBcd8b, dnnl_aBcde8b]
            guard (3...5).contains(shape.count) else { return false }
            out = try memoryDescriptor(shape, tags[shape.count - 3])
        default: out = try plainDescriptor(shape)
        }
        let result = PlanValue(name: name, dataType: .float, shape: shape, layout: Self.isPlain(out, shape) ? nil : out, buffer: -1)
        var placements: [Int: Int] = [:]  // root buffer → byte offset inside the result
        var start = 0
        for p in parts {
            defer { start += p.shape[1] }
            guard p.buffer >= 0, p.constant == nil, buffers[p.buffer].parent == nil, buffers[p.buffer].first >= 0,
                  try SwiftKernels.channelLayout(p.layout, shape: p.shape) == layoutClass,
                  let (slot, _) = try channelRange(result, from: start, count: p.shape[1]) else { return false }
            // The part's own position inside its buffer (a split view) fixes where the buffer goes.
            let place = slot - p.offset
            if let existing = placements[p.buffer] { guard existing == place else { return false } } else { placements[p.buffer] = place }
        }
        // Whole buffers must fit and not overlap one another.
        let spans = placements.map { (start: $0.value, end: $0.value + buffers[$0.key].bytes) }.sorted { $0.start < $1.start }
        guard spans.allSatisfy({ $0.start >= 0 && $0.end <= result.byteCount }), zip(spans, spans.dropFirst()).allSatisfy({ $0.end <= $1.start }) else {
            return false
        }
        let v = newValue(name, .float, shape, layout: out)
        for (b, offset) in placements {
            buffers[b].parent = (v.buffer, offset)
            buffers[b].names.append(name)  // nothing overwrites a part while the result is read
        }
        return true
    }

    // MARK: Memory plan

    /// Places buffers in the arena: largest first, each at the lowest 64-byte-aligned
    /// offset free during its whole live range.
    private func assignMemory(_ stored: StoredMemoryPlan?) throws {
        // A buffer placed inside another lives as long as it; only roots are placed.
        func root(_ b: Int) -> (Int, Int) {
            var b = b, delta = 0
            while let p = buffers[b].parent { delta += p.offset; b = p.buffer }
            return (b, delta)
        }
        for (i, step) in steps.enumerated() {
            for v in step.reads where v.buffer >= 0 {
                let r = root(v.buffer).0
                buffers[r].last = max(buffers[r].last, i)
            }
            for v in step.writes where v.buffer >= 0 {
                let r = root(v.buffer).0
                buffers[r].first = min(buffers[r].first, i)
                buffers[r].last = max(buffers[r].last, i)
            }
        }
        for b in buffers.indices where buffers[b].parent != nil {
            let r = root(b).0
            buffers[r].first = min(buffers[r].first, buffers[b].first)
            buffers[r].last = max(buffers[r].last, buffers[b].last)
        }
        let roots = buffers.indices.filter { buffers[$0].parent == nil }
        var total = 0
        if let stored, adopt(stored, roots: roots) {
            total = stored.arenaBytes
            usesStoredMemoryPlan = true
        } else {
            total = place(roots)
        }
        for b in buffers.indices where buffers[b].parent != nil {
            let (r, delta) = root(b)
            buffers[b].offset = buffers[r].offset + delta
            buffers[b].first = buffers[r].first
            buffers[b].last = buffers[r].last
        }
        arenaBytes = total
        free(arena)
        arena = try Self.allocateRegion(total, "activation arena")
        scratchpadBytes = steps.compactMap { ($0 as? PrimitiveStep)?.primitive.scratchpadBytes }.max() ?? 0
        free(scratchpad)
        scratchpad = try Self.allocateRegion(scratchpadBytes, "scratchpad")
    }

    /// 64-byte-aligned memory for the arena or scratchpad; an error, not a trap, when
    /// the system cannot give it (shapes from a damaged file can ask for anything).
    static func allocateRegion(_ bytes: Int, _ what: String) throws -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 64, max(bytes, 64)) == 0, let p else {
            throw AnvilError.invalidArgument("cannot allocate \(bytes) bytes for the \(what)")
        }
        return p
    }

    /// Whether this plan took its offsets from an engine file's memory plan.
    public private(set) var usesStoredMemoryPlan = false

    /// Takes the offsets of a stored plan when it has every root buffer with its size,
    /// all inside its arena, and no two buffers live at once overlap.
    private func adopt(_ stored: StoredMemoryPlan, roots: [Int]) -> Bool {
        guard stored.buffers.count == roots.count, stored.arenaBytes >= 0 else { return false }
        var offsets: [Int] = []
        var end = 0
        for b in roots {
            guard let name = buffers[b].names.first, let s = stored.buffers[name], s.bytes == buffers[b].bytes,
                  s.offset >= 0, s.offset % 64 == 0, s.offset <= stored.arenaBytes - (s.bytes + 63) / 64 * 64 else { return false }
            offsets.append(s.offset)
            end = max(end, s.offset + (s.bytes + 63) / 64 * 64)
        }
        // The arena is exactly as large as its buffers reach (a file cannot ask for more).
        guard stored.arenaBytes == end else { return false }
        for i in roots.indices {
            for j in roots.indices where j > i {
                let a = buffers[roots[i]], b = buffers[roots[j]]
                if a.first <= b.last && b.first <= a.last && offsets[i] < offsets[j] + b.bytes && offsets[j] < offsets[i] + a.bytes { return false }
            }
        }
        for (i, b) in roots.enumerated() { buffers[b].offset = offsets[i] }
        return true
    }

    /// Places root buffers by liveness, largest first, each at the lowest offset free
    /// during its life; returns the arena size.
    private func place(_ roots: [Int]) -> Int {
        let order = roots.sorted { (buffers[$0].bytes, $1) > (buffers[$1].bytes, $0) }
        var placed: [Int] = []
        var total = 0
        for b in order {
            let size = (buffers[b].bytes + 63) / 64 * 64
            let overlapping = placed.filter { buffers[$0].first <= buffers[b].last && buffers[b].first <= buffers[$0].last }
                .map { (buffers[$0].offset, (buffers[$0].bytes + 63) / 64 * 64) }.sorted { $0.0 < $1.0 }
            var offset = 0
            for (start, length) in overlapping {
                if offset + size <= start { break }
                offset = max(offset, start + length)
            }
            buffers[b].offset = offset
            placed.append(b)
            total = max(total, offset + size)
        }
        return total
    }

    /// This plan's memory plan in the form an engine file stores.
    public var storedMemoryPlan: StoredMemoryPlan {
        var stored = StoredMemoryPlan(arenaBytes: arenaBytes, buffers: [:])
        for b in buffers where b.parent == nil { if let name = b.names.first { stored.buffers[name] = .init(bytes: b.bytes, offset: b.offset) } }
        return stored
    }

    /// The memory plan: every arena buffer with its offset, size, live steps and values.
    public var memoryPlan: [(offset: Int, bytes: Int, firstStep: Int, lastStep: Int, values: [String])] {
        buffers.map { ($0.offset, $0.bytes, $0.first, $0.last, $0.names) }.sorted { ($0.offset, $0.firstStep) < ($1.offset, $1.firstStep) }
    }

    /// Steps with what they read and write, for reports and debugging.
    public var stepDetails: [(layer: String, implementation: String, reads: [String], writes: [String])] {
        steps.map { ($0.layer, $0.implementation, $0.reads.map(\.name), $0.writes.map(\.name)) }
    }

    /// How a value is stored, in TensorRT's "Format/Datatype" wording; nil for constants and unknown names.
    public func format(of name: String) -> String? {
        guard let v = values[name] else { return nil }
        let type = v.dataType == .float ? "FP32" : v.dataType.description.uppercased()
        guard let layout = v.layout else { return "Row major linear \(type)" }
        switch try? SwiftKernels.channelLayout(layout, shape: v.shape) {
        case .blocked(let n)?: return "Channel major \(type) format where channel % \(n) == 0"
        case .channelsLast?: return "Channel major \(type) format"
        default: return "oneDNN blocked \(type)"
        }
    }

    /// The shape a value has in this plan.
    public func shape(of name: String) -> [Int]? { values[name]?.shape }

    /// Bytes the values would take without reuse (for reports).
    public var unplannedBytes: Int { buffers.reduce(0) { $0 + $1.bytes } }

    /// Makes the weighted kernels (JIT code generation and weight prepacking, the bulk
    /// of planning) on all cores before the sequential planning pass picks them up.
    private func prepareKernels(_ layers: [Layer], inputs: [(name: String, type: DataType, shape: [Int])]) {
        var known = types
        for i in inputs { known[i.name] = (i.type, i.shape) }
        let jobs = layers.compactMap { layer -> (() throws -> Void)? in
            guard layer.tactic != "reference", let first = layer.inputs.first, let (t, shape) = known[first], t == .float else { return nil }
            let compiler = FastCompiler(plan: self, layer: layer)
            if let (key, make) = try? compiler.convolutionKernel(inputShape: shape) { return { _ = try self.shared.kernel(key, make: make) } }
            if let (key, make) = try? compiler.matmulKernel(inputShape: shape) { return { _ = try self.shared.kernel(key, make: make) } }
            return nil
        }
        // Failures surface again, with their message, when the layer is planned.
        nonisolated(unsafe) let work = jobs
        DispatchQueue.concurrentPerform(iterations: work.count) { i in _ = try? work[i]() }
    }

    // MARK: Reference layers

    private func compileReference(_ layer: Layer) throws {
        guard let definition = KernelRegistry.lookup(domain: layer.domain, opType: layer.opType, opset: layer.opset) else {
            throw AnvilError.unsupportedOp(node: layer.name, op: layer.opType, domain: layer.domain, version: layer.opset)
        }
        let inputs: [ReferenceStep.Either] = try layer.inputs.map { name in
            if name.isEmpty { return .absent }
            if let t = try constants.tensor(name) { return .constant(t) }
            guard let v = values[name] else { throw PlanUnsupported(reason: "'\(name)' has no value before layer '\(layer.name)'") }
            return .value(try plain(v))
        }
        var outputs: [PlanValue] = []
        for name in layer.outputs where !name.isEmpty {
            let (t, shape) = try type(of: name)
            guard t != .string else { throw PlanUnsupported(reason: "'\(name)' holds strings") }
            outputs.append(newValue(name, t, shape))
        }
        steps.append(ReferenceStep(layer, definition: definition, inputs: inputs, outputs: outputs))
    }

    // MARK: Fast layers

    /// Appends oneDNN or view steps for the layer; false when it needs the reference kernel.
    private func compileFast(_ layer: Layer) throws -> Bool {
        let outputs = layer.outputs.filter { !$0.isEmpty }
        guard !outputs.isEmpty else { return false }
        // Every non-constant input must have been planned already.
        for name in layer.inputs where !name.isEmpty && !constants.contains(name) && values[name] == nil {
            throw PlanUnsupported(reason: "'\(name)' has no value before layer '\(layer.name)'")
        }
        do {
            return try FastCompiler(plan: self, layer: layer).compile()
        } catch let e as AnvilError {
            // A layer oneDNN refuses (unimplemented shapes) falls back to its reference kernel.
            if case .invalidTensor(let name, _) = e, name == "oneDNN" { return false }
            throw e
        }
    }

    /// The compiler of one fast layer; it sees the plan's planning state.
    struct FastCompiler {
        let plan: ExecutionPlan
        let layer: Layer

        var op: String { layer.domain == "ai.anvil" ? "anvil." + layer.opType : layer.opType }
        var attributes: AttributeReader { AttributeReader(attributes: layer.attributes, name: layer.name, opType: layer.opType) }
        var context: EvalContext {
            EvalContext(name: layer.name, opType: layer.opType, domain: layer.domain, outputCount: layer.outputs.count,
                        attributes: layer.attributes, opset: layer.opset, inputs: []) { _, _ in [] }
        }

        func constant(_ i: Int) -> Tensor? {
            i < layer.inputs.count ? plan.constants[layer.inputs[i]] : nil
        }
        /// A constant input as kernel weights (not made into a tensor unless the kernel needs it plain).
        func weights(_ i: Int) -> KernelWeights? {
            i < layer.inputs.count ? plan.constants.weights(layer.inputs[i]) : nil
        }
        func isConstant(_ i: Int) -> Bool { i < layer.inputs.count && plan.constants.contains(layer.inputs[i]) }
        func value(_ i: Int) -> PlanValue? {
            i < layer.inputs.count && !layer.inputs[i].isEmpty ? plan.values[layer.inputs[i]] : nil
        }
        func present(_ i: Int) -> Bool { i < layer.inputs.count && !layer.inputs[i].isEmpty }
        func outputType(_ i: Int = 0) throws -> (DataType, [Int]) { try plan.type(of: layer.outputs[i]) }

        func compile() throws -> Bool {
            // Extra outputs (MaxPool's indices, Dropout's mask …) need the reference kernel; Split's are its parts.
            guard op == "Split" || layer.outputs.dropFirst().allSatisfy(\.isEmpty) else { return false }
            switch op {
            case "Conv", "anvil.FusedConv": return try convolution()
            case "MatMul", "anvil.FusedMatMul", "Gemm", "anvil.FusedGemm": return try matmul()
            case "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool": return try pooling()
            case "Add", "Sub", "Mul", "Div", "Max", "Min": return try binary()
            case "Softmax": return try softmax()
            case "LayerNormalization": return try layerNormalization()
            case "Concat": return try concat()
            case "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout": return try view()
            case "Split": return try split()
            case "anvil.Attention", "Attention": return try attention()
            case "Transpose": return try transpose()
            case "ConvTranspose": return try convTranspose()
            case "BatchNormalization": return try batchNormalization()
            case "Resize": return try resize()
            case "Gather": return try gather()
            default: return try eltwise()
            }
        }

        /// The destination of a layer with a residual sum: the residual's own storage
        /// when nothing reads it later, else a fresh buffer it is copied into.
        func residualDestination(_ r: PlanValue, layout: dnnl_memory_desc_t, notSharing input: PlanValue) throws -> (PlanValue, [(PlanValue, PlanValue)]) {
            let name = layer.outputs[0]
            let (t, shape) = try outputType()
            let residual = try plan.inLayout(r, layout)
            if plan.dies(residual), residual.buffer != input.buffer, residual.constant == nil {
                return (plan.alias(name, of: residual, type: t, shape: shape, layout: layout), [])
            }
            return (plan.newValue(name, t, shape, layout: layout), [(residual, plan.values[name]!)])
        }

        /// The convolution kernel's sharing key and maker for an input shape; nil when oneDNN does not apply.
        func convolutionKernel(inputShape: [Int]) throws -> (String, () throws -> DNNLConvolution)? {
            guard op == "Conv" || op == "anvil.FusedConv", layer.tactic != "reference", let w = weights(1), w.dataType == .float,
                  w.rank == inputShape.count, (3...5).contains(w.rank), !present(2) || isConstant(2) else { return nil }
            let attrs = try WindowAttributes(context)
            let g = try attrs.geometry(context, input: Array(inputShape[2...]), kernel: attrs.kernelShape ?? Array(w.shape[2...]))
            guard g.output.allSatisfy({ $0 > 0 }), inputShape[1] == w.shape[1] * attrs.group else { return nil }
            let activation = try fusedActivation(context)
            let bias = constant(2), residual = present(3), engine = plan.engine
            // The tactic chosen at build time ("onednn:plain", "onednn:winograd" …); blocked as oneDNN prefers by default.
            let tactic = layer.tactic.split(separator: ":").dropFirst().first.flatMap { ConvolutionTactic(rawValue: String($0)) }
                ?? ConvolutionTactic(layout: .blocked)
            return ("conv|\(layer.name)|\(inputShape)|\(tactic.rawValue)", {
                try DNNLConvolution(engine: engine, inputShape: inputShape, weights: w, bias: bias, geometry: g, group: attrs.group,
                                    activation: activation, residual: residual, layout: tactic.layout, winograd: tactic.winograd)
            })
        }

        func convolution() throws -> Bool {
            guard let x = value(0), x.dataType == .float, let (key, make) = try convolutionKernel(inputShape: x.shape) else { return false }
            let residualValue = present(3) ? value(3) : nil
            if present(3) && residualValue == nil { return false }
            let conv = try plan.shared.kernel(key, make: make)
            let primitive = conv.kernel.primitive
            let src = try plan.inLayout(x, primitive.query(dnnl_query_src_md))
            let dstLayout = primitive.query(dnnl_query_dst_md)
            let (out, copies) = try residualValue.map { try residualDestination($0, layout: dstLayout, notSharing: src) }
                ?? (plan.newValue(layer.outputs[0], .float, conv.outputShape, layout: dstLayout), [])
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC, src, primitive.query(dnnl_query_src_md)), (DNNL_ARG_DST, out, dstLayout)],
                                            fixed: try conv.kernel.constantArguments(), copies: copies))
            for step in conv.activationSteps {
                plan.steps.append(PrimitiveStep(layer: layer.name, primitive: step, arguments: [(DNNL_ARG_SRC, out, dstLayout), (DNNL_ARG_DST, out, dstLayout)]))
            }
            return true
        }

        /// The matmul kernel's sharing key and maker for an input shape; nil when oneDNN does not apply.
        func matmulKernel(inputShape: [Int]) throws -> (String, () throws -> DNNLMatMul)? {
            guard ["MatMul", "anvil.FusedMatMul", "Gemm", "anvil.FusedGemm"].contains(op), layer.tactic != "reference",
                  let w = weights(1), w.dataType == .float, w.rank == 2 else { return nil }
            let gemm = layer.opType.hasSuffix("Gemm")
            let a = attributes
            let transB = gemm ? try a.int("transB", 0) != 0 : false
            let k = transB ? w.shape[1] : w.shape[0], n = transB ? w.shape[0] : w.shape[1]
            var bias: Tensor?
            if present(2) {
                guard let c = constant(2), c.dataType == .float, c.count == n, c.shape.dropLast().allSatisfy({ $0 == 1 }) else { return nil }
                if gemm { guard try a.float("beta", 1) == 1 else { return nil } }
                bias = try c.reshaped([n])
            }
            if gemm { guard inputShape.count == 2, try a.int("transA", 0) == 0 else { return nil } }
            guard inputShape.count >= 2, inputShape.last == k, k > 0 else { return nil }
            let m = inputShape.reduce(1, *) / k
            guard m > 0 else { return nil }
            let alpha = gemm ? try a.float("alpha", 1) : 1
            let activation = try fusedActivation(context)
            let residual = present(3), engine = plan.engine
            return ("matmul|\(layer.name)|\(m)", {
                try DNNLMatMul(engine: engine, m: m, weights: w, transposedWeights: transB, alpha: alpha, bias: bias,
                               activation: activation, residual: residual)
            })
        }

        func matmul() throws -> Bool {
            if op == "MatMul", weights(1)?.rank != 2 { return try batchedMatmul() }
            guard let x = value(0), x.dataType == .float, let (key, make) = try matmulKernel(inputShape: x.shape) else { return false }
            let residualValue = present(3) ? value(3) : nil
            if present(3) && residualValue == nil { return false }
            let (_, shape) = try outputType()
            let mm = try plan.shared.kernel(key, make: make)
            guard shape.reduce(1, *) == mm.m * mm.n else { return false }
            let primitive = mm.kernel.primitive
            let src = try plan.plain(x)
            let (out, copies) = try residualValue.map { try residualDestination(plan.plain($0), layout: plainDescriptor(shape), notSharing: src) }
                ?? (plan.newValue(layer.outputs[0], .float, shape), [])
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC, src, primitive.query(dnnl_query_src_md)),
                                                        (DNNL_ARG_DST, out, primitive.query(dnnl_query_dst_md))],
                                            fixed: try mm.kernel.constantArguments(), copies: copies))
            return true
        }

        func pooling() throws -> Bool {
            guard let x = value(0), x.dataType == .float, (3...5).contains(x.shape.count) else { return false }
            let spatial = Array(x.shape[2...])
            let (_, outShape) = try outputType()
            var alg = dnnl_pooling_max
            var kernel = spatial, strides = spatial.map { _ in 1 }, dilations = strides
            var padsBegin = spatial.map { _ in 0 }, padsEnd = padsBegin
            if op == "GlobalAveragePool", let layout = try SwiftKernels.channelLayout(x.layout, shape: x.shape) {
                // A Swift kernel: oneDNN's average sums in an order that depends on the thread count.
                let out = plan.newValue(layer.outputs[0], .float, outShape)
                let n = x.shape[0], c = x.shape[1], count = spatial.reduce(1, *)
                plan.steps.append(SwiftStep(layer: layer.name, reads: [x], writes: [out]) { p in
                    SwiftKernels.globalAveragePool(p.address(x).assumingMemoryBound(to: Float.self), layout: layout, n: n, c: c, spatial: count,
                                                   into: p.address(out).assumingMemoryBound(to: Float.self))
                })
                return true
            }
            if op.hasPrefix("Global") {
                alg = op == "GlobalMaxPool" ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding
            } else {
                let attrs = try WindowAttributes(context)
                guard let k = attrs.kernelShape else { return false }
                let g = try attrs.geometry(context, input: spatial, kernel: k)
                kernel = k; strides = g.strides; dilations = g.dilations; padsBegin = g.padsBegin
                // oneDNN wants the right padding that reproduces the output size exactly.
                padsEnd = attrs.ceilMode ? zip(zip(g.output, spatial), zip(g.strides, zip(k, zip(g.dilations, g.padsBegin)))).map { o, p in
                    let (out, input) = o, (s, (kk, (d, pb))) = p
                    return max(0, (out - 1) * s + (kk - 1) * d + 1 - input - pb)
                } : g.padsEnd
                if op == "AveragePool" {
                    let include = try attributes.int("count_include_pad", 0) != 0
                    if include && attrs.ceilMode { return false }
                    alg = include ? dnnl_pooling_avg_include_padding : dnnl_pooling_avg_exclude_padding
                }
                guard Array(x.shape[0..<2]) + g.output == outShape else { return false }
            }
            var src = try x.descriptor()
            var dst = try memoryDescriptor(outShape, dnnl_format_tag_any)
            var desc = dnnl_pooling_v2_desc_t()
            try check(anvil_dnnl_pool_desc(&desc, alg, &src, &dst, Int32(spatial.count), strides.map { Int64($0) }, kernel.map { Int64($0) },
                                           dilations.map { Int64($0) }, padsBegin.map { Int64($0) }, padsEnd.map { Int64($0) }), "describing the pooling")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "pooling")
            let dstLayout = primitive.query(dnnl_query_dst_md)
            let out = plan.newValue(layer.outputs[0], .float, outShape, layout: dstLayout)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC, x, src), (DNNL_ARG_DST, out, dstLayout)]))
            return true
        }

        /// The eltwise algorithm of a unary layer, nil when oneDNN has none.
        func eltwiseAlgorithm() throws -> (dnnl_alg_kind_t, Float, Float)? {
            let a = attributes
            switch op {
            case "Relu": return (dnnl_eltwise_relu, 0, 0)
            case "LeakyRelu": return (dnnl_eltwise_relu, try a.float("alpha", 0.01), 0)
            case "Sigmoid": return (dnnl_eltwise_logistic, 0, 0)
            case "Tanh": return (dnnl_eltwise_tanh, 0, 0)
            case "Elu": return (dnnl_eltwise_elu, try a.float("alpha", 1), 0)
            case "HardSwish": return (dnnl_eltwise_hardswish, 0, 0)
            case "Mish": return (dnnl_eltwise_mish, 0, 0)
            case "Exp": return (dnnl_eltwise_exp, 0, 0)
            case "Log": return (dnnl_eltwise_log, 0, 0)
            case "Sqrt": return (dnnl_eltwise_sqrt, 0, 0)
            case "Abs": return (dnnl_eltwise_abs, 0, 0)
            case "Neg": return (dnnl_eltwise_linear, -1, 0)
            case "Gelu", "anvil.Gelu":
                return try a.string("approximate", "none") == "tanh" ? (dnnl_eltwise_gelu_tanh, 0, 0) : (dnnl_eltwise_gelu_erf, 0, 0)
            case "anvil.SiLU": return (dnnl_eltwise_swish, 1, 0)
            case "Clip":
                var lo = -Float.greatestFiniteMagnitude, hi = Float.greatestFiniteMagnitude
                if layer.opset < 11 {
                    lo = try a.float("min", lo); hi = try a.float("max", hi)
                } else {
                    if present(1) { guard let t = constant(1), t.dataType == .float, t.count == 1 else { return nil }; lo = t.floats[0] }
                    if present(2) { guard let t = constant(2), t.dataType == .float, t.count == 1 else { return nil }; hi = t.floats[0] }
                }
                guard lo <= hi else { return nil }
                return (dnnl_eltwise_clip_v2, lo, hi)
            default: return nil
            }
        }

        /// Gather along axis 0 (embedding lookups): rows copied from the table, which a
        /// constant table supplies in place from the engine file. Indices are checked at run time.
        func gather() throws -> Bool {
            guard present(0), present(1), let indices = value(1), indices.dataType == .int64 || indices.dataType == .int32,
                  let (type, shape) = try? outputType(), type != .string else { return false }
            let tableShape = isConstant(0) ? plan.constants.type(of: layer.inputs[0])?.1 : value(0)?.shape
            guard let tableShape, !tableShape.isEmpty, try attributes.int("axis", 0) == 0 || ShapeMath.normalizeAxis(try attributes.int("axis", 0), rank: tableShape.count) == 0,
                  shape == indices.shape + tableShape.dropFirst() else { return false }
            guard let table = try operand(0), table.dataType == type else { return false }
            let t = try plan.plain(table), i = try plan.plain(indices)
            let out = plan.newValue(layer.outputs[0], type, shape)
            let rows = tableShape[0], rowBytes = tableShape.dropFirst().reduce(1, *) * type.byteSize, count = indices.shape.reduce(1, *)
            let wide = indices.dataType == .int64, name = layer.name
            plan.steps.append(SwiftStep(layer: layer.name, reads: [t, i], writes: [out]) { p in
                let source = p.address(t), target = p.address(out), index = p.address(i)
                for k in 0..<count {
                    var row = wide ? Int(index.load(fromByteOffset: 8 * k, as: Int64.self)) : Int(index.load(fromByteOffset: 4 * k, as: Int32.self))
                    if row < 0 { row += rows }
                    guard row >= 0, row < rows else {
                        throw AnvilError.invalidNode(node: name, op: "Gather", reason: "index \(row) is outside [-\(rows), \(rows - 1)]")
                    }
                    (target + k * rowBytes).copyMemory(from: source + row * rowBytes, byteCount: rowBytes)
                }
            })
            return true
        }

        func eltwise() throws -> Bool {
            guard let (alg, alpha, beta) = try eltwiseAlgorithm(), let x = value(0), x.dataType == .float else { return false }
            var data = try x.descriptor()
            var desc = dnnl_eltwise_desc_t()
            try check(dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, alg, &data, alpha, beta), "describing the eltwise op")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "eltwise")
            let (t, shape) = try outputType()
            guard shape == x.shape, t == .float else { return false }
            let out = plan.dies(x) && x.constant == nil ? plan.alias(layer.outputs[0], of: x, type: t, shape: shape, layout: x.layout)
                                                        : plan.newValue(layer.outputs[0], t, shape, layout: x.layout)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC, x, data), (DNNL_ARG_DST, out, data)]))
            return true
        }

        /// A plan value for input `i` (a constant copied into plan storage), nil when absent.
        func operand(_ i: Int) throws -> PlanValue? {
            if let v = value(i) { return v }
            if isConstant(i) { return try plan.constantValue(layer.inputs[i]) }
            return nil
        }

        func binary() throws -> Bool {
            guard layer.inputs.count == 2, var a = try operand(0), var b = try operand(1), a.dataType == .float, b.dataType == .float else { return false }
            let (t, shape) = try outputType()
            let commutative = ["Add", "Mul", "Max", "Min"].contains(op)
            if commutative, a.shape != shape || (a.constant != nil && b.constant == nil && b.shape == shape) { swap(&a, &b) }
            guard a.shape == shape, a.constant == nil, b.shape.count <= shape.count else { return false }
            let algorithms: [String: dnnl_alg_kind_t] = ["Add": dnnl_binary_add, "Sub": dnnl_binary_sub, "Mul": dnnl_binary_mul,
                                                         "Div": dnnl_binary_div, "Max": dnnl_binary_max, "Min": dnnl_binary_min]
            var src0 = try a.descriptor()
            if b.shape == a.shape {
                b = try plan.inLayout(b, src0)
            } else {
                b = try plan.plain(b)
            }
            var src1 = b.shape == a.shape ? try b.descriptor() : try plainDescriptor(Array(repeating: 1, count: shape.count - b.shape.count) + b.shape)
            if src1.ndims != src0.ndims { return false }
            var dst = src0
            var desc = dnnl_binary_desc_t()
            try check(dnnl_binary_desc_init(&desc, algorithms[op]!, &src0, &src1, &dst), "describing the binary op")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "binary")
            let inPlace = plan.dies(a) && a.buffer != b.buffer
            let out = inPlace ? plan.alias(layer.outputs[0], of: a, type: t, shape: shape, layout: a.layout)
                              : plan.newValue(layer.outputs[0], t, shape, layout: a.layout)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC_0, a, src0), (DNNL_ARG_SRC_1, b, src1), (DNNL_ARG_DST, out, dst)]))
            return true
        }

        func softmax() throws -> Bool {
            guard let v = value(0), v.dataType == .float, !v.shape.isEmpty else { return false }
            let rank = v.shape.count
            guard let axis = ShapeMath.normalizeAxis(try attributes.int("axis", layer.opset >= 13 ? -1 : 1), rank: rank),
                  layer.opset >= 13 || axis == rank - 1 else { return false }
            let x = try plan.plain(v)
            if axis != rank - 1 {
                // oneDNN's softmax over an outer axis is its slow reference; a Swift kernel does it.
                let outer = x.shape[..<axis].reduce(1, *), inner = x.shape[(axis + 1)...].reduce(1, *), n = x.shape[axis]
                let scratch = plan.ownedFloats(2 * inner)
                let out = plan.dies(x) ? plan.alias(layer.outputs[0], of: x, type: .float, shape: x.shape) : plan.newValue(layer.outputs[0], .float, x.shape)
                plan.steps.append(SwiftStep(layer: layer.name, reads: [x], writes: [out]) { p in
                    SwiftKernels.softmax(p.address(x).assumingMemoryBound(to: Float.self), outer: outer, axis: n, inner: inner,
                                         into: p.address(out).assumingMemoryBound(to: Float.self), scratch: scratch)
                })
                return true
            }
            var data = try x.descriptor()
            var desc = dnnl_softmax_v2_desc_t()
            try check(dnnl_softmax_v2_forward_desc_init(&desc, dnnl_forward_inference, dnnl_softmax_accurate, &data, &data, Int32(axis)), "describing the softmax")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "softmax")
            let out = plan.dies(x) ? plan.alias(layer.outputs[0], of: x, type: .float, shape: x.shape) : plan.newValue(layer.outputs[0], .float, x.shape)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, data), (DNNL_ARG_DST, out, data)]))
            return true
        }

        func layerNormalization() throws -> Bool {
            guard let v = value(0), v.dataType == .float, let scale = constant(1), scale.dataType == .float,
                  let axis = ShapeMath.normalizeAxis(try attributes.int("axis", -1), rank: v.shape.count) else { return false }
            let inner = v.shape[axis...].reduce(1, *), outer = v.shape[..<axis].reduce(1, *)
            guard inner > 0, outer > 0, scale.count == inner else { return false }
            let bias = constant(2)
            if present(2) { guard let bias, bias.dataType == .float, bias.count == inner else { return false } }
            let x = try plan.plain(v)
            var data = try plainDescriptor([outer, inner])
            var desc = dnnl_layer_normalization_desc_t()
            let flags = dnnl_use_scale.rawValue | (bias == nil ? 0 : dnnl_use_shift.rawValue)
            try check(dnnl_layer_normalization_forward_desc_init(&desc, dnnl_forward_inference, &data, nil, try attributes.float("epsilon", 1e-5), flags),
                      "describing the layer normalization")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "layer normalization")
            let scaleValue = try plan.constantValue(layer.inputs[1], scale.reshaped([inner]))
            var arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [
                (DNNL_ARG_SRC, x, data), (DNNL_ARG_SCALE, scaleValue, try plainDescriptor([inner]))]
            if let bias { arguments.append((DNNL_ARG_SHIFT, try plan.constantValue(layer.inputs[2], bias.reshaped([inner])), try plainDescriptor([inner]))) }
            let out = plan.dies(x) ? plan.alias(layer.outputs[0], of: x, type: .float, shape: x.shape) : plan.newValue(layer.outputs[0], .float, x.shape)
            arguments.append((DNNL_ARG_DST, out, data))
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive, arguments: arguments))
            return true
        }

        func concat() throws -> Bool {
            let (t, shape) = try outputType()
            guard t == .float, let axis = ShapeMath.normalizeAxis(try attributes.int("axis", 0), rank: shape.count) else { return false }
            var parts: [PlanValue] = []
            for i in layer.inputs.indices {
                guard let p = try operand(i), p.dataType == .float, p.shape.count == shape.count else { return false }
                if p.shape[axis] > 0 { parts.append(p) }
            }
            guard !parts.isEmpty else { return false }
            if axis == 1, try plan.concatenateInPlace(parts, name: layer.outputs[0], shape: shape) { return true }
            var sources = try parts.map { try $0.descriptor() }
            var dst = try memoryDescriptor(shape, dnnl_format_tag_any)
            var pd: dnnl_primitive_desc_t?
            let attributes = try DNNLAttributes()
            try check(dnnl_concat_primitive_desc_create(&pd, &dst, Int32(sources.count), Int32(axis), &sources, attributes.handle, plan.engine.handle),
                      "describing the concat")
            let primitive = try DNNLPrimitive(descriptor: pd!)
            let dstLayout = primitive.query(dnnl_query_dst_md)
            let out = plan.newValue(layer.outputs[0], t, shape, layout: dstLayout)
            var arguments = zip(parts, sources).enumerated().map { (DNNL_ARG_MULTIPLE_SRC + Int32($0.offset), $0.element.0, $0.element.1) }
            arguments.append((DNNL_ARG_DST, out, dstLayout))
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive, arguments: arguments.map { (arg: $0.0, value: $0.1, descriptor: $0.2) }))
            return true
        }

        /// Reshape-like layers on a plain tensor are views: no step at all.
        func view() throws -> Bool {
            guard let v = value(0) else { return false }
            switch op {
            case "Reshape": guard present(1), isConstant(1) else { return false }
            case "Squeeze", "Unsqueeze": if present(1) && !isConstant(1) { return false }
            case "Dropout": if present(2) { guard let m = constant(2), m.count == 1, m.doubles[0] == 0 else { return false } }
            default: break
            }
            let (t, shape) = try outputType()
            guard t == v.dataType, shape.reduce(1, *) == v.count else { return false }
            let x = try plan.plain(v)
            _ = plan.alias(layer.outputs[0], of: x, type: t, shape: shape)
            return true
        }

        /// A transpose is a reorder from a strided view of the input to the plain output.
        func transpose() throws -> Bool {
            guard let v = value(0), dnnlType(v.dataType) != nil, !v.shape.isEmpty else { return false }
            let rank = v.shape.count
            let perm = try attributes.ints("perm") ?? Array((0..<rank).reversed())
            guard perm.sorted() == Array(0..<rank) else { return false }
            let x = try plan.plain(v)
            let strides = ShapeMath.strides(v.shape)
            let outShape = perm.map { v.shape[$0] }
            guard try outputType().1 == outShape else { return false }
            let view = try stridedDescriptor(outShape, strides: perm.map { strides[$0] }, v.dataType)
            let out = plan.newValue(layer.outputs[0], v.dataType, outShape)
            let primitive = try reorderPrimitive(from: view, to: out.descriptor(), engine: plan.engine)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_FROM, x, view), (DNNL_ARG_TO, out, try out.descriptor())]))
            return true
        }

        /// MatMul of two runtime tensors (or a constant of rank above 2), batch
        /// dimensions broadcast as numpy does: one oneDNN matmul over plain layouts.
        func batchedMatmul() throws -> Bool {
            guard layer.inputs.count == 2, let a0 = try operand(0), let b0 = try operand(1), a0.dataType == .float, b0.dataType == .float,
                  a0.shape.count >= 2, b0.shape.count >= 2, a0.constant == nil else { return false }
            let (t, shape) = try outputType()
            let rank = shape.count
            guard t == .float, rank == max(a0.shape.count, b0.shape.count), rank <= 12 else { return false }
            let ad: [Int] = Array(repeating: 1, count: rank - a0.shape.count) + a0.shape
            let bd: [Int] = Array(repeating: 1, count: rank - b0.shape.count) + b0.shape
            guard ad[rank - 1] == bd[rank - 2], shape[rank - 2] == ad[rank - 2], shape[rank - 1] == bd[rank - 1] else { return false }
            for i in 0..<(rank - 2) {
                let aFits = ad[i] == shape[i] || ad[i] == 1, bFits = bd[i] == shape[i] || bd[i] == 1
                guard aFits, bFits else { return false }
            }
            guard shape.allSatisfy({ $0 > 0 }), ad[rank - 1] > 0 else { return false }
            let a = try plan.plain(a0), b = try plan.plain(b0)
            var am = try plainDescriptor(ad), bm = try plainDescriptor(bd), dm = try plainDescriptor(shape)
            var desc = dnnl_matmul_desc_t()
            try check(dnnl_matmul_desc_init(&desc, &am, &bm, nil, &dm), "describing the matmul")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "matmul")
            let out = plan.newValue(layer.outputs[0], .float, shape)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC, a, am), (DNNL_ARG_WEIGHTS, b, bm), (DNNL_ARG_DST, out, dm)]))
            return true
        }

        /// ConvTranspose with explicit (or no) pads on oneDNN's deconvolution; the
        /// output size comes from the build-time shapes, the end padding absorbs output_padding.
        func convTranspose() throws -> Bool {
            guard let x = value(0), x.dataType == .float, (3...5).contains(x.shape.count), let w = weights(1), w.dataType == .float,
                  w.rank == x.shape.count, !present(2) || isConstant(2) else { return false }
            let a = attributes
            let n = x.shape.count - 2
            guard try a.string("auto_pad", "NOTSET") == "NOTSET" || (try a.string("auto_pad", "NOTSET")) == "VALID", !a.has("output_shape") else { return false }
            let (_, outShape) = try outputType()
            let group = try a.int("group", 1)
            let kernel = try a.ints("kernel_shape") ?? Array(w.shape[2...])
            let strides = try a.ints("strides") ?? Array(repeating: 1, count: n), dilations = try a.ints("dilations") ?? Array(repeating: 1, count: n)
            let pads = try a.ints("pads") ?? Array(repeating: 0, count: 2 * n)
            guard kernel.count == n, strides.count == n, dilations.count == n, pads.count == 2 * n, outShape.count == x.shape.count else { return false }
            let padsBegin = Array(pads[..<n])
            var padsEnd: [Int] = []
            for i in 0..<n {
                let span: Int = (kernel[i] - 1) * dilations[i] + 1
                let full: Int = strides[i] * (x.shape[i + 2] - 1) + span
                padsEnd.append(full - outShape[i + 2] - padsBegin[i])
            }
            guard padsEnd.allSatisfy({ $0 >= 0 }) else { return false }
            let bias = constant(2), engine = plan.engine
            let deconv = try plan.shared.kernel("deconv|\(layer.name)|\(x.shape)") {
                try DNNLDeconvolution(engine: engine, inputShape: x.shape, weights: w, bias: bias, outputShape: outShape, strides: strides,
                                      dilations: dilations, padsBegin: padsBegin, padsEnd: padsEnd, group: group)
            }
            let primitive = deconv.kernel.primitive
            let src = try plan.inLayout(x, primitive.query(dnnl_query_src_md))
            let dstLayout = primitive.query(dnnl_query_dst_md)
            let out = plan.newValue(layer.outputs[0], .float, outShape, layout: dstLayout)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive,
                                            arguments: [(DNNL_ARG_SRC, src, primitive.query(dnnl_query_src_md)), (DNNL_ARG_DST, out, dstLayout)],
                                            fixed: try deconv.kernel.constantArguments()))
            return true
        }

        /// Inference batch normalization with constant statistics, in any layout.
        func batchNormalization() throws -> Bool {
            guard let x = value(0), x.dataType == .float, x.shape.count >= 2, try attributes.int("training_mode", 0) == 0,
                  try attributes.int("spatial", 1) == 1 else { return false }
            let c = x.shape[1]
            var stats: [Tensor] = []
            for i in 1...4 {
                guard let t = constant(i), t.dataType == .float, t.count == c else { return false }
                stats.append(try t.reshaped([c]))
            }
            var data = try x.descriptor()
            var desc = dnnl_batch_normalization_desc_t()
            let flags = dnnl_use_global_stats.rawValue | dnnl_use_scale.rawValue | dnnl_use_shift.rawValue
            try check(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_inference, &data, try attributes.float("epsilon", 1e-5), flags),
                      "describing the batch normalization")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "batch normalization")
            let vector = try plainDescriptor([c])
            var arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [(DNNL_ARG_SRC, x, data)]
            for (arg, i) in [(DNNL_ARG_SCALE, 1), (DNNL_ARG_SHIFT, 2), (DNNL_ARG_MEAN, 3), (DNNL_ARG_VARIANCE, 4)] {
                arguments.append((arg, try plan.constantValue(layer.inputs[i], stats[i - 1]), vector))
            }
            let (t, shape) = try outputType()
            guard t == .float, shape == x.shape else { return false }
            let out = plan.dies(x) ? plan.alias(layer.outputs[0], of: x, type: t, shape: shape, layout: x.layout)
                                   : plan.newValue(layer.outputs[0], t, shape, layout: x.layout)
            arguments.append((DNNL_ARG_DST, out, data))
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive, arguments: arguments))
            return true
        }

        /// Nearest-neighbour upsampling by whole factors, where ONNX's coordinate
        /// modes all pick source index ⌊o / factor⌋ as oneDNN's resampling does.
        func resize() throws -> Bool {
            guard layer.opset >= 11, let x = value(0), x.dataType == .float, (3...5).contains(x.shape.count) else { return false }
            let a = attributes
            guard try a.string("mode", "nearest") == "nearest", try a.int("antialias", 0) == 0 else { return false }
            let transform = try a.string("coordinate_transformation_mode", "half_pixel"), rounding = try a.string("nearest_mode", "round_prefer_floor")
            let fits = (transform == "asymmetric" && rounding == "floor")
                || (["half_pixel", "pytorch_half_pixel"].contains(transform) && rounding.hasPrefix("round"))
            let (_, outShape) = try outputType()
            guard fits, outShape.count == x.shape.count, Array(outShape[0..<2]) == Array(x.shape[0..<2]),
                  zip(outShape[2...], x.shape[2...]).allSatisfy({ $1 > 0 && $0 % $1 == 0 && $0 >= $1 }) else { return false }
            var src = try x.descriptor()
            var dst = try memoryDescriptor(outShape, dnnl_format_tag_any)
            var desc = dnnl_resampling_desc_t()
            try check(dnnl_resampling_forward_desc_init(&desc, dnnl_forward_inference, dnnl_resampling_nearest, nil, &src, &dst), "describing the resize")
            let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: plan.engine, what: "resize")
            let dstLayout = primitive.query(dnnl_query_dst_md)
            let out = plan.newValue(layer.outputs[0], .float, outShape, layout: dstLayout)
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, src), (DNNL_ARG_DST, out, dstLayout)]))
            return true
        }

        /// A split whose parts are contiguous is a set of views: every dimension before
        /// the axis is 1 in plain layout, or a channel split at block boundaries of a
        /// batch-1 blocked tensor.
        func split() throws -> Bool {
            guard let v = value(0), let axis = ShapeMath.normalizeAxis(try attributes.int("axis", 0), rank: v.shape.count),
                  !layer.outputs.contains(where: \.isEmpty) else { return false }
            var parts: [(String, [Int])] = []
            for name in layer.outputs {
                let (t, shape) = try plan.type(of: name)
                guard t == v.dataType, shape.count == v.shape.count else { return false }
                parts.append((name, shape))
            }
            guard parts.reduce(0, { $0 + $1.1[axis] }) == v.shape[axis] else { return false }
            if !v.isPlain, axis == 1 {
                var start = 0
                let offsets = parts.map { p -> Int in defer { start += p.1[1] }; return start }
                if let views = try zip(parts, offsets).map({ try plan.channelRange(v, from: $1, count: $0.1[1]) }) as [(Int, dnnl_memory_desc_t)?]?,
                   views.allSatisfy({ $0 != nil }) {
                    for ((name, shape), view) in zip(parts, views) { _ = plan.alias(name, of: v, type: v.dataType, shape: shape, layout: view!.1, byteOffset: view!.0) }
                    return true
                }
            }
            guard v.shape[..<axis].allSatisfy({ $0 == 1 }) else { return false }
            let x = try plan.plain(v)
            let inner = v.shape[(axis + 1)...].reduce(1, *) * v.dataType.byteSize
            var offset = 0
            for (name, shape) in parts {
                _ = plan.alias(name, of: x, type: v.dataType, shape: shape, byteOffset: offset)
                offset += shape[axis] * inner
            }
            return true
        }

        /// Scaled dot-product attention on [batch, sequence, heads × size] inputs as
        /// two batched oneDNN matmuls over strided views and a softmax between them.
        func attention() throws -> Bool {
            guard layer.inputs.count <= 4, let q0 = value(0), let k0 = value(1), let v0 = value(2),
                  [q0, k0, v0].allSatisfy({ $0.dataType == .float && $0.shape.count == 3 }) else { return false }
            let a = attributes
            guard let heads = try a.int("q_num_heads"), heads > 0, try a.int("kv_num_heads") == heads, try a.int("is_causal", 0) == 0,
                  try a.float("softcap", 0) == 0 else { return false }
            let batch = q0.shape[0], s = q0.shape[1], hidden = q0.shape[2], sk = k0.shape[1]
            guard hidden % heads == 0, k0.shape == [batch, sk, hidden], v0.shape[0] == batch, v0.shape[1] == sk, v0.shape[2] % heads == 0 else { return false }
            let d = hidden / heads, dv = v0.shape[2] / heads
            let (t, outShape) = try outputType()
            guard t == .float, outShape == [batch, s, heads * dv] else { return false }
            let scale = try a.float("scale") ?? 1 / Float(d).squareRoot()
            var mask: PlanValue?
            if present(3) {
                guard let m = try operand(3), m.dataType == .float, m.shape.count <= 4 else { return false }
                let m4 = Array(repeating: 1, count: 4 - m.shape.count) + m.shape
                guard m4[0] == 1 || m4[0] == batch, m4[1] == 1 || m4[1] == heads, m4[2] == 1 || m4[2] == s, m4[3] == sk else { return false }
                mask = try plan.plain(m)
            }
            let q = try plan.plain(q0), k = try plan.plain(k0), v = try plan.plain(v0)
            let qView = try stridedDescriptor([batch, heads, s, d], strides: [s * hidden, d, hidden, 1])
            let kView = try stridedDescriptor([batch, heads, d, sk], strides: [sk * hidden, d, 1, hidden])
            let vView = try stridedDescriptor([batch, heads, sk, dv], strides: [sk * heads * dv, dv, heads * dv, 1])
            let yView = try stridedDescriptor([batch, heads, s, dv], strides: [s * heads * dv, dv, heads * dv, 1])
            let scoresDesc = try plainDescriptor([batch, heads, s, sk])
            let maskDesc = try mask.map { try plainDescriptor(Array(repeating: 1, count: 4 - $0.shape.count) + $0.shape) }
            // Scores = scale · Q·Kᵀ (+ mask), in a temporary of this layer.
            let scores = plan.newValue(layer.name + "#scores", .float, [batch, heads, s, sk])
            var qd = qView, kd = kView, sd = scoresDesc
            var desc1 = dnnl_matmul_desc_t()
            try check(dnnl_matmul_desc_init(&desc1, &qd, &kd, nil, &sd), "describing Q·Kᵀ")
            let scoresPrimitive: DNNLPrimitive
            var separateMask = false
            do {
                scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale, add: maskDesc), engine: plan.engine, what: "attention scores")
            } catch {
                guard maskDesc != nil else { throw error }
                scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale), engine: plan.engine, what: "attention scores")
                separateMask = true
            }
            var scoreArgs: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [(DNNL_ARG_SRC, q, qView), (DNNL_ARG_WEIGHTS, k, kView), (DNNL_ARG_DST, scores, scoresDesc)]
            if let mask, let maskDesc, !separateMask { scoreArgs.append((DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE | DNNL_ARG_SRC_1, mask, maskDesc)) }
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: scoresPrimitive, arguments: scoreArgs))
            if let mask, let maskDesc, separateMask {
                var s0 = scoresDesc, s1 = maskDesc, dd = scoresDesc
                var bd = dnnl_binary_desc_t()
                try check(dnnl_binary_desc_init(&bd, dnnl_binary_add, &s0, &s1, &dd), "describing the attention mask")
                let add = try DNNLPrimitive(bd, attributes: DNNLAttributes(), engine: plan.engine, what: "attention mask")
                plan.steps.append(PrimitiveStep(layer: layer.name, primitive: add,
                                                arguments: [(DNNL_ARG_SRC_0, scores, scoresDesc), (DNNL_ARG_SRC_1, mask, maskDesc), (DNNL_ARG_DST, scores, scoresDesc)]))
            }
            var smd = scoresDesc
            var sdesc = dnnl_softmax_v2_desc_t()
            try check(dnnl_softmax_v2_forward_desc_init(&sdesc, dnnl_forward_inference, dnnl_softmax_accurate, &smd, &smd, 3), "describing the attention softmax")
            let soft = try DNNLPrimitive(sdesc, attributes: DNNLAttributes(), engine: plan.engine, what: "attention softmax")
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: soft, arguments: [(DNNL_ARG_SRC, scores, scoresDesc), (DNNL_ARG_DST, scores, scoresDesc)]))
            // Y = P·V, written through a view straight into [batch, sequence, heads × size].
            let out = plan.newValue(layer.outputs[0], .float, outShape)
            var pd = scoresDesc, vd = vView, yd = yView
            var desc2 = dnnl_matmul_desc_t()
            try check(dnnl_matmul_desc_init(&desc2, &pd, &vd, nil, &yd), "describing P·V")
            let context = try DNNLPrimitive(desc2, attributes: DNNLAttributes(), engine: plan.engine, what: "attention context")
            plan.steps.append(PrimitiveStep(layer: layer.name, primitive: context,
                                            arguments: [(DNNL_ARG_SRC, scores, scoresDesc), (DNNL_ARG_WEIGHTS, v, vView), (DNNL_ARG_DST, out, yView)]))
            return true
        }
    }
}
