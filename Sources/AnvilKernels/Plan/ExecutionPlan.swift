import AnvilCore
import COneDNN
import Dispatch
import Foundation

/// Why a graph cannot be planned (it then runs on the interpreter).
public struct PlanUnsupported: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

/// A compiled run of a graph for one set of input shapes: every layer instantiated
/// from its decision by the lowering table (oneDNN primitives with their memory bound
/// once, Swift kernels, views, reference kernels as the last resort), every value
/// placed in one activation arena by the memory planner (in place where safe), and
/// layouts kept blocked between oneDNN layers with reorders only at boundaries. A
/// run then makes no allocations except in reference layers.
public final class ExecutionPlan {
    let engine: DNNLEngine
    let shared: SharedKernels
    var values: [String: PlanValue] = [:]
    var steps: [PlanStep] = []
    var graphInputs: [PlanValue] = []
    var graphOutputs: [Either] = []
    enum Either { case value(PlanValue), constant(Tensor) }

    var buffers: [ArenaBuffer] = []
    public private(set) var arenaBytes = 0
    private(set) var arena: UnsafeMutableRawPointer
    private(set) var scratchpad: UnsafeMutableRawPointer
    public private(set) var scratchpadBytes = 0
    private var owned: [UnsafeMutableRawPointer] = []
    /// The decision each layer was planned with, in layer order.
    public private(set) var decisions: [(layer: String, decision: LayerDecision)] = []
    /// Whether this plan took its offsets from an engine file's memory plan.
    public private(set) var usesStoredMemoryPlan = false

    // Planning state.
    let constants: ConstantStore
    private let types: [String: (DataType, [Int])]
    private var lastUse: [String: Int] = [:]
    /// Per value, the layers that read it (by index), and the layers.
    private var readers: [String: [Int]] = [:]
    private var allLayers: [Layer] = []
    /// Relu layers whose work the layer producing their input already does (a batch
    /// normalization with its fused ReLU): their output is a view of that input.
    private(set) var absorbedActivations: Set<String> = []
    private var plainCopies: [String: PlanValue] = [:]
    private var layerIndex = 0
    /// Whether some buffer has been placed inside another (then `dies` checks whole trees).
    private var nestedBuffers = false
    /// Per buffer: how many of its names `lastRead(of:)` has seen, and their last reader.
    private var lastReadCache: [Int: (count: Int, last: Int)] = [:]
    /// Copies of values reordered into other (non-plain) layouts, reused by later readers.
    private var layoutCopies: [String: [PlanValue]] = [:]
    /// What the current layer's lowering changed, undone when it does not fit after all.
    private var journal: [JournalEntry] = []
    private enum JournalEntry { case value(String, PlanValue?), bufferName(Int), plainCopy(String), layoutCopy(String), parent(Int) }

    /// Whether the plan is only for inputs without NaN or ±∞: then its fused ReLU and Clip,
    /// max pooling, softmax, Max, Min and Exp take oneDNN's fastest forms, which handle NaN
    /// otherwise than ONNX says, wherever no NaN or infinity can reach them
    /// (`reachedByNonFinite`). Callers check the inputs (`NonFinite.anyIn`) and run inputs
    /// that hold NaN or ±∞ on a plan made without this promise.
    public let assumesFiniteInputs: Bool
    /// Values that may hold NaN or ±∞ even when the inputs do not (for a plan that assumes finite inputs).
    let reachedByNonFinite: Set<String>

    /// Plans `layers` for inputs of the given shapes. `types` gives every value's
    /// element type and shape for these inputs (recorded at build time or observed).
    /// A layer with a decision is instantiated as decided; one without (while
    /// building) takes the first kernel of the lowering table that fits it.
    public init(layers: [Layer], constants: ConstantStore, inputs: [(name: String, type: DataType, shape: [Int])],
                outputs: [String], types: [String: (DataType, [Int])], engine: DNNLEngine, shared: SharedKernels,
                memoryPlan stored: StoredMemoryPlan? = nil, finiteInputs: Bool = false) throws {
        self.engine = engine
        assumesFiniteInputs = finiteInputs
        reachedByNonFinite = finiteInputs ? Self.reachedByNonFinite(layers, constants: constants) : []
        self.shared = shared
        self.constants = constants
        self.types = types
        arena = try Self.allocateRegion(64, "activation arena")
        scratchpad = try Self.allocateRegion(64, "scratchpad")
        allLayers = layers
        for (i, l) in layers.enumerated() {
            for name in l.inputs where !name.isEmpty { lastUse[name] = i }
            for name in Set(l.inputs) where !name.isEmpty { readers[name, default: []].append(i) }
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
            decisions.append((layer.name, try lower(layer)))
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
    /// each step's layer and milliseconds.
    public func run(_ inputs: [String: Tensor], stream: DNNLStream,
                    profile: ((_ layer: String, _ milliseconds: Double) -> Void)? = nil) throws -> [Tensor] {
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
    private func runSteps(stream: DNNLStream, profile: ((_ layer: String, _ milliseconds: Double) -> Void)?) throws {
        for step in steps {
            let start = profile == nil ? 0 : DispatchTime.now().uptimeNanoseconds
            if !(step is PrimitiveStep) { try stream.wait() }
            try step.run(self, stream: stream)
            if let profile {
                try stream.wait()
                profile(step.layer, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
        }
        try stream.wait()
    }

    /// Executes only the plan's oneDNN primitives, once each, in order: the baseline
    /// of what oneDNN itself costs in a run (its calls allocate their argument maps).
    public func executePrimitivesOnly(stream: DNNLStream) throws {
        for step in primitiveSteps { try step.execute(stream) }
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


    // MARK: Values and buffers

    func newValue(_ name: String, _ type: DataType, _ shape: [Int], layout: dnnl_memory_desc_t? = nil) -> PlanValue {
        let v = PlanValue(name: name, dataType: type, shape: shape, layout: layout.flatMap { Self.isPlain($0, shape, type) ? nil : $0 }, buffer: buffers.count)
        buffers.append(ArenaBuffer(bytes: v.byteCount, first: steps.count, last: steps.count, names: [name]))
        journal.append(.value(name, values[name]))
        values[name] = v
        return v
    }

    /// A view of `source`'s storage (a reshape, a split part, an in-place result).
    func alias(_ name: String, of source: PlanValue, type: DataType, shape: [Int], layout: dnnl_memory_desc_t? = nil, byteOffset: Int = 0) -> PlanValue {
        let v = PlanValue(name: name, dataType: type, shape: shape, layout: layout.flatMap { Self.isPlain($0, shape, type) ? nil : $0 },
                          buffer: source.buffer, offset: source.offset + byteOffset)
        v.constant = source.constant
        if v.buffer >= 0 { addName(name, to: v.buffer) }
        journal.append(.value(name, values[name]))
        values[name] = v
        return v
    }

    /// Records that buffer `b` also holds `name` (it lives as long as that value is used).
    func addName(_ name: String, to b: Int) {
        buffers[b].names.append(name)
        journal.append(.bufferName(b))
    }

    /// Places buffer `b` inside buffer `parent` at a byte offset.
    func place(_ b: Int, inside parent: Int, at offset: Int) {
        buffers[b].parent = (parent, offset)
        nestedBuffers = true
        journal.append(.parent(b))
    }

    /// Whether `d` is the row-major layout of `shape` with elements of `type` (a plain BF16
    /// descriptor of a float value is not: the value is stored narrower).
    static func isPlain(_ d: dnnl_memory_desc_t, _ shape: [Int], _ type: DataType) -> Bool {
        dnnlType(type) == d.data_type && isPlain(d, shape)
    }

    /// Whether `d` is row-major for `shape`, whatever its element type.
    static func isPlain(_ d: dnnl_memory_desc_t, _ shape: [Int]) -> Bool {
        guard var p = try? plainDescriptor(shape, .float) else { return false }
        var a = d
        // Compare layouts only: the element type of `d` decides.
        p.data_type = a.data_type
        return anvil_dnnl_md_equal(&a, &p) != 0
    }

    /// The one layer that reads `name`, when exactly one does and `name` is no graph output.
    func soleReader(of name: String) -> Layer? {
        guard lastUse[name] != Int.max, let r = readers[name], r.count == 1 else { return nil }
        return allLayers[r[0]]
    }

    /// Records that `layer` (a Relu) is done by the layer producing its input.
    func absorb(_ layer: String) { absorbedActivations.insert(layer) }

    /// Whether nothing reads `v`'s storage after the current layer, so a layer may overwrite it.
    /// A buffer placed inside another (a concatenation's part) shares bytes with the
    /// whole tree of buffers under the same root: all of them must be dead.
    func dies(_ v: PlanValue) -> Bool {
        guard v.buffer >= 0, buffers[v.buffer].first >= 0 else { return false }
        func dead(_ b: Int) -> Bool { lastRead(of: b) <= layerIndex }
        guard dead(v.buffer) else { return false }
        guard nestedBuffers else { return true }
        func root(_ b: Int) -> Int { var b = b; while let p = buffers[b].parent { b = p.buffer }; return b }
        let r = root(v.buffer)
        return buffers.indices.allSatisfy { b in buffers[b].first < 0 || root(b) != r || dead(b) }
    }

    /// The last layer reading any value a buffer holds. Cached per buffer and extended as
    /// names are added (a chain of in-place layers adds one per layer: scanning them all
    /// on every check was quadratic); recomputed when a rollback removed names.
    func lastRead(of b: Int) -> Int {
        let names = buffers[b].names
        var (count, last) = lastReadCache[b] ?? (0, -1)
        if count > names.count { (count, last) = (0, -1) }
        for name in names[count...] { last = max(last, lastUse[name] ?? -1) }
        lastReadCache[b] = (names.count, last)
        return last
    }

    /// A constant as a plan value (plain, storage owned by the plan).
    func constantValue(_ name: String, _ t: Tensor) throws -> PlanValue {
        let v = PlanValue(name: name, dataType: t.dataType, shape: t.shape, layout: nil, buffer: -1)
        let bytes = max(v.byteCount, 64)
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        owned.append(p)
        try t.withHostBytes { raw in if let b = raw.baseAddress { p.copyMemory(from: b, byteCount: raw.count) } }
        v.constant = p
        return v
    }

    /// A constant as a plan value: read in place (steps never write constants) from the
    /// engine file's mapping when aligned to its element size, else from the aligned copy
    /// the constant store keeps for every plan (constants inside the graph section lie at
    /// any offset), else copied into plan memory.
    func constantValue(_ name: String) throws -> PlanValue? {
        #if _endian(little)
        if let (type, shape) = constants.type(of: name), let stable = constants.alignedBytes(name), let base = stable.baseAddress {
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

    /// Plan-owned memory for `count` integers (freed with the plan).
    func ownedInts(_ count: Int) -> UnsafeMutablePointer<Int> {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Int>.stride, alignment: 64)
        owned.append(p)
        return p.assumingMemoryBound(to: Int.self)
    }

    /// `v` in plain layout: itself, or a reordered copy (made once per value).
    func plain(_ v: PlanValue) throws -> PlanValue {
        if v.isPlain { return v }
        if let p = plainCopies[v.name] { return p }
        let p = try reordered(v, to: plainDescriptor(v.shape, v.dataType), name: v.name + "#plain")
        plainCopies[v.name] = p
        journal.append(.plainCopy(v.name))
        return p
    }

    /// `v` row-major in the type it is stored in: a BF16-stored float value stays BF16.
    func plainStored(_ v: PlanValue) throws -> PlanValue {
        guard v.isReduced else { return try plain(v) }
        return try inLayout(v, plainDescriptor(v.shape, v.storedType))
    }

    /// `v` in layout `d`: itself or a reordered copy.
    func inLayout(_ v: PlanValue, _ d: dnnl_memory_desc_t) throws -> PlanValue {
        if try v.stored(as: d) { return v }
        if Self.isPlain(d, v.shape, v.dataType) { return try plain(v) }
        // One copy per layout however many layers read it (a feature map feeding several branches).
        if let copy = try layoutCopies[v.name]?.first(where: { try $0.stored(as: d) }) { return copy }
        let copy = try reordered(v, to: d, name: v.name + "#\(steps.count)")
        layoutCopies[v.name, default: []].append(copy)
        journal.append(.layoutCopy(v.name))
        return copy
    }

    /// `v` in its own element type: a float value a reduced-precision layer stored in BF16
    /// reordered to FP32 in the same layout (once per value); other values as they are.
    func full(_ v: PlanValue) throws -> PlanValue {
        guard v.isReduced, let layout = v.layout, let t = dnnlType(v.dataType) else { return v }
        return try inLayout(v, retyped(layout, t))
    }

    private func reordered(_ v: PlanValue, to d: dnnl_memory_desc_t, name: String) throws -> PlanValue {
        let out = newValue(name, v.dataType, v.shape, layout: d)
        addName(v.name, to: out.buffer)  // lives as long as its source is used
        let primitive = try reorderPrimitive(from: v.descriptor(), to: d, engine: engine)
        steps.append(PrimitiveStep(layer: "reorder " + v.name, primitive: primitive,
                                   arguments: [(DNNL_ARG_FROM, v, try v.descriptor()), (DNNL_ARG_TO, out, d)], implementation: "reorder"))
        return out
    }

    func type(of name: String) throws -> (DataType, [Int]) {
        guard let t = types[name] else { throw PlanUnsupported(reason: "the shape of '\(name)' is not known") }
        return t
    }

    // MARK: Lowering layers

    /// Instantiates a layer: its decided kernel, or (undecided) the first candidate of
    /// the lowering table that fits; the reference kernel when none does. Returns the
    /// decision taken.
    private func lower(_ layer: Layer) throws -> LayerDecision {
        // Every non-constant input must have been planned already.
        for name in layer.inputs where !name.isEmpty && !constants.contains(name) && values[name] == nil {
            throw PlanUnsupported(reason: "'\(name)' has no value before layer '\(layer.name)'")
        }
        var candidates = LoweringTable.candidates(for: layer)
        var reasons: [String] = []
        if let decided = layer.decision {
            // The decided kernel; others of the op only where it does not fit these shapes
            // (new shapes of a dynamic engine). A layer the builder left on the reference
            // kernel tries the table again: it may fit shapes the builder did not plan for.
            if decided.kernel == .reference {
                if let reason = decided.slowPathReason { reasons.append(reason) }
            } else {
                candidates = [decided.kernel] + candidates.filter { $0 != decided.kernel }
            }
        } else if candidates.isEmpty {
            reasons.append("no fast kernel for \(layer.opKey)\(LoweringTable.serves(layer.opKey) ? " with these outputs" : "")")
        }
        for kind in candidates {
            let journalStart = journal.count, stepCount = steps.count, bufferCount = buffers.count
            do {
                if let decision = try LoweringTable.lower(kind, LayerLowering(plan: self, layer: layer)) {
                    journal.removeAll(keepingCapacity: true)
                    return decision
                }
                reasons.append("\(kind) does not fit its shapes or attributes")
            } catch let slow as SlowImplementation {
                reasons.append(slow.description)
            } catch AnvilError.invalidTensor(let name, let reason) where name == "oneDNN" {
                // A layer oneDNN refuses (unimplemented shapes) falls back.
                reasons.append("\(kind): oneDNN: \(reason)")
            }
            rollBack(to: journalStart, steps: stepCount, buffers: bufferCount)
        }
        journal.removeAll(keepingCapacity: true)
        try lowerToReference(layer)
        return .reference(reasons.isEmpty ? "no fast kernel fits" : reasons.joined(separator: "; "))
    }

    /// Undoes what a lowering that did not fit changed.
    private func rollBack(to entry: Int, steps stepCount: Int, buffers bufferCount: Int) {
        while journal.count > entry {
            switch journal.removeLast() {
            case .value(let name, let previous): values[name] = previous
            case .bufferName(let b): if b < bufferCount { buffers[b].names.removeLast(); lastReadCache[b] = nil }
            case .plainCopy(let name): plainCopies[name] = nil
            case .layoutCopy(let name): layoutCopies[name]?.removeLast()
            case .parent(let b): if b < bufferCount { buffers[b].parent = nil }
            }
        }
        steps.removeLast(steps.count - stepCount)
        for b in bufferCount..<max(bufferCount, buffers.count) { lastReadCache[b] = nil }
        buffers.removeLast(buffers.count - bufferCount)
    }

    private func lowerToReference(_ layer: Layer) throws {
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

    /// Makes the weighted kernels (JIT code generation and weight prepacking, the bulk
    /// of planning) on all cores before the sequential planning pass picks them up.
    private func prepareKernels(_ layers: [Layer], inputs: [(name: String, type: DataType, shape: [Int])]) {
        var known = types
        for i in inputs { known[i.name] = (i.type, i.shape) }
        let jobs = layers.compactMap { layer -> (() throws -> Void)? in
            guard let first = layer.inputs.first, let (t, shape) = known[first], t == .float else { return nil }
            return LoweringTable.prepare(LayerLowering(plan: self, layer: layer), inputShape: shape)
        }
        // Failures surface again, with their message, when the layer is planned.
        nonisolated(unsafe) let work = jobs
        // On the OpenMP team, not Dispatch threads: oneDNN's prepacking reorders would start
        // an OpenMP team on each Dispatch thread, whose workers were seen to spin beside
        // inference's own team and halve its speed for the life of the process. Inside the
        // team those reorders run on the job's thread; kernels are still made for the
        // team's thread count.
        Parallel.forEach(work.count) { i in _ = try? work[i]() }
    }

    // MARK: Memory

    /// Places the buffers in the arena (the memory planner) and allocates it and the scratchpad.
    private func assignMemory(_ stored: StoredMemoryPlan?) throws {
        let lives = steps.map { (reads: $0.reads.map(\.buffer), writes: $0.writes.map(\.buffer)) }
        let (total, adopted) = MemoryPlanner.assign(&buffers, steps: lives, stored: stored)
        usesStoredMemoryPlan = adopted
        arenaBytes = total
        // The new region first: when it cannot be had, the plan keeps its old one (freeing
        // it first left a dangling pointer that deinit freed again).
        let newArena = try Self.allocateRegion(total, "activation arena")
        free(arena)
        arena = newArena
        scratchpadBytes = primitiveSteps.map(\.primitive.scratchpadBytes).max() ?? 0
        let newScratchpad = try Self.allocateRegion(scratchpadBytes, "scratchpad")
        free(scratchpad)
        scratchpad = newScratchpad
    }

    /// 64-byte-aligned memory for the arena or scratchpad; an error, not a trap, when
    /// the system cannot give it (shapes from a damaged file can ask for anything).
    static func allocateRegion(_ bytes: Int, _ what: String) throws -> UnsafeMutableRawPointer {
        try MemoryPolicy.check(bytes, for: "the \(what)")
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 64, max(bytes, 64)) == 0, let p else {
            throw AnvilError.invalidArgument("cannot allocate \(bytes) bytes for the \(what)")
        }
        return p
    }

    /// This plan's memory plan in the form an engine file stores.
    public var storedMemoryPlan: StoredMemoryPlan { MemoryPlanner.stored(buffers, arenaBytes: arenaBytes) }

    /// The memory plan: every arena buffer with its offset, size, live steps and values.
    public var memoryPlan: [(offset: Int, bytes: Int, firstStep: Int, lastStep: Int, values: [String])] {
        buffers.map { ($0.offset, $0.bytes, $0.first, $0.last, $0.names) }.sorted { ($0.offset, $0.firstStep) < ($1.offset, $1.firstStep) }
    }

    /// Bytes the values would take without reuse (for reports).
    public var unplannedBytes: Int { buffers.reduce(0) { $0 + $1.bytes } }

    // MARK: Reports

    /// The steps as (layer, implementation) pairs, for reports.
    public var stepSummary: [(layer: String, implementation: String)] { steps.map { ($0.layer, $0.implementation) } }

    /// What runs a layer, as every report names it: its steps' implementations joined
    /// ("brg:avx512_core + jit:avx512_core"), or "view (no copy)" for a layer without steps.
    public func implementation(of layer: String) -> String { implementations[layer] ?? "view (no copy)" }

    private lazy var implementations: [String: String] = {
        var byLayer: [String: [String]] = [:]
        for step in steps { byLayer[step.layer, default: []].append(step.implementation) }
        return byLayer.mapValues { $0.joined(separator: " + ") }
    }()

    /// Steps with what they read and write, for reports and debugging.
    public var stepDetails: [(layer: String, implementation: String, reads: [String], writes: [String])] {
        steps.map { ($0.layer, $0.implementation, $0.reads.map(\.name), $0.writes.map(\.name)) }
    }

    /// How a value is stored, in TensorRT's "Format/Datatype" wording; nil for constants and unknown names.
    public func format(of name: String) -> String? {
        guard let v = values[name] else { return nil }
        let stored = v.storedType
        let type = stored == .float ? "FP32" : stored == .bfloat16 ? "BF16" : stored == .float16 ? "FP16" : stored.description.uppercased()
        switch Layout.of(v.layout, shape: v.shape) {
        case .plain: return "Row major linear \(type)"
        case .blocked8, .blocked16: return "Channel major \(type) format where channel % \(Layout.of(v.layout, shape: v.shape).channelBlock!) == 0"
        case .channelsLast: return "Channel major \(type) format"
        case .preferred, .opaque: return "oneDNN blocked \(type)"
        }
    }

    /// The shape a value has in this plan.
    public func shape(of name: String) -> [Int]? { values[name]?.shape }

    /// The element type a value has in this plan.
    public func dataType(of name: String) -> DataType? { values[name]?.dataType }

    /// The precision a value is stored in: BF16 or FP16 for a float value kept narrower, else FP32
    /// (whatever the value's own type: integer and boolean values are not reduced).
    func precision(of name: String) -> Precision {
        switch values[name]?.storedType {
        case .bfloat16 where values[name]?.dataType == .float: .bf16
        case .float16 where values[name]?.dataType == .float: .fp16
        default: .fp32
        }
    }

    /// The layout a value has in this plan.
    func layout(of name: String) -> Layout? { values[name].map { Layout.of($0.layout, shape: $0.shape) } }

    /// Whether any step runs a oneDNN primitive (the engine then needs the instruction set it was planned for).
    public var usesOneDNN: Bool { !primitiveSteps.isEmpty }

    /// The oneDNN steps, those inside non-finite guards included.
    var primitiveSteps: [PrimitiveStep] {
        steps.flatMap { step -> [PlanStep] in (step as? NonFiniteGuardStep)?.fast ?? [step] }.compactMap { $0 as? PrimitiveStep }
    }
}
