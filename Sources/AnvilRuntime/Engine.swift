import AnvilCore
import AnvilEngine
import AnvilKernels
import Dispatch
import Foundation

/// A loaded engine: its layer graph, ready to create execution contexts. An
/// engine is immutable and may be shared by many threads, each with its own context.
public final class Engine: @unchecked Sendable {
    public let graph: EngineGraph
    public let producer: String
    public let requiredFeatures: CPUFeatures
    /// The oneDNN engine the fast layers run on, shared by all contexts.
    let dnnl: DNNLEngine
    /// oneDNN kernels with their prepacked weights, shared by all contexts.
    let kernels: SharedKernels

    /// Reads an engine file (memory-mapped) and validates it.
    public convenience init(path: String) throws {
        try self.init(file: EngineFile.load(path: path), name: path)
    }

    /// Constants by name (for plans), read from the file on first use.
    var constants: ConstantStore { graph.constants }
    /// The input shapes the engine was built for (empty: any shape).
    public let profile: ShapeProfile
    /// The memory plan for the build-time shapes, from the file (MEMPLAN section).
    public let memoryPlan: StoredMemoryPlan?

    /// Reads an engine file: sections in place, constants decoded on first use,
    /// prepacked weights used by the kernels straight from the mapping.
    public convenience init(file: EngineFile, name: String) throws {
        let contents = try EngineFormat.read(file, name: name)
        try self.init(graph: contents.graph, producer: file.producer, requiredFeatures: file.requiredFeatures, profile: contents.profile,
                      memoryPlan: contents.memoryPlan, name: name)
    }

    /// An engine over a graph in memory (as the builder makes it). A graph read from a
    /// file keeps the file's bytes alive through its constants.
    public convenience init(graph: EngineGraph, producer: String, requiredFeatures: CPUFeatures, profile: ShapeProfile,
                            memoryPlan: StoredMemoryPlan? = nil, name: String) throws {
        try self.init(graph: graph, producer: producer, requiredFeatures: requiredFeatures, profile: profile, memoryPlan: memoryPlan, name: name,
                      dnnl: DNNLEngine(), kernels: SharedKernels())
    }

    /// The engine as its compilation recorded it (required instruction set, memory
    /// plan), sharing the kernels that compilation made.
    public func recording(_ compiled: CompiledEngine) throws -> Engine {
        try Engine(graph: graph, producer: producer, requiredFeatures: compiled.requiredFeatures, profile: profile, memoryPlan: compiled.memoryPlan,
                   name: "", dnnl: dnnl, kernels: kernels)
    }

    private init(graph: EngineGraph, producer: String, requiredFeatures: CPUFeatures, profile: ShapeProfile, memoryPlan: StoredMemoryPlan?,
                 name: String, dnnl: DNNLEngine, kernels: SharedKernels) throws {
        self.graph = graph
        self.profile = profile
        self.memoryPlan = memoryPlan
        self.producer = producer
        self.requiredFeatures = requiredFeatures
        self.dnnl = dnnl
        self.kernels = kernels
        // Every layer's op must be known to this runtime before anything runs.
        var missing: [String] = []
        Self.visit(graph) { layer in
            if KernelRegistry.lookup(domain: layer.domain, opType: layer.opType, opset: layer.opset) == nil {
                missing.append("\(layer.name) (\(layer.domain.isEmpty ? "" : layer.domain + ".")\(layer.opType))")
            }
        }
        guard missing.isEmpty else {
            throw AnvilError.invalidModel(file: name, field: "engine layers", reason: "this runtime cannot run \(missing.joined(separator: ", "))")
        }
    }

    /// Control-flow bodies as engines of their own (`body(_:)`), by subgraph.
    private let bodiesLock = NSLock()
    private var bodies: [ObjectIdentifier: Engine] = [:]

    /// A subgraph of this engine's graph (an If branch, a Loop or Scan body) as an engine
    /// of its own, which a context plans like any graph: its inputs are the body's
    /// declared ones followed by the values it reads from the graphs around it, whose
    /// constants it sees as its own (a chained store, nothing copied). It has kernels of
    /// its own: layer names are unique only within one graph. Made once, shared by every
    /// context of this engine.
    func body(_ sub: EngineGraph) throws -> Engine {
        bodiesLock.lock()
        defer { bodiesLock.unlock() }
        if let made = bodies[ObjectIdentifier(sub)] { return made }
        let constants = ConstantStore(chaining: sub.constants, to: graph.constants)
        let declared = Set(sub.inputs.map(\.name))
        let outer = GraphInterpreter<EngineGraph>.outerReferences(sub).filter { !constants.contains($0) && !declared.contains($0) }.sorted()
        let inputs = sub.inputs + outer.map { ($0, TensorType(graph.valueTypes[$0]?.elementType, nil)) }
        let bodyGraph = EngineGraph(name: sub.name, inputs: inputs, outputs: sub.outputs, constants: constants, layers: sub.layers)
        let made = try Engine(graph: bodyGraph, producer: producer, requiredFeatures: requiredFeatures, profile: ShapeProfile(), memoryPlan: nil,
                              name: sub.name, dnnl: dnnl, kernels: SharedKernels())
        bodies[ObjectIdentifier(sub)] = made
        return made
    }

    /// Kernels made so far with constant weights, and how many use the file's prepacked weights in place.
    public var weightsInPlace: (inPlace: Int, kernels: Int) { kernels.weightsInPlace }

    static func visit(_ g: EngineGraph, _ body: (Layer) -> Void) {
        for l in g.layers {
            body(l)
            for a in l.attributes.values {
                switch a {
                case .graph(let s): if let e = s as? EngineGraph { visit(e, body) }
                case .graphs(let ss): for s in ss { if let e = s as? EngineGraph { visit(e, body) } }
                default: break
                }
            }
        }
    }

    /// Inputs of the build-time (optimal) shapes, zero-filled; dynamic dimensions
    /// without a profile get `ShapeProfile.samples`' sizes (batch 1, others 64).
    public func sampleInputs() throws -> [String: Tensor] {
        var inputs: [String: Tensor] = [:]
        let samples = ShapeProfile.samples(graph.inputs.map { ($0.name, $0.type.dims ?? []) })
        for (name, type) in graph.inputs {
            let shape = profile.opt[name] ?? graph.valueTypes[name]?.concreteShape ?? samples[name] ?? []
            inputs[name] = try Tensor.zeros(type.elementType ?? .float, shape: shape)
        }
        return inputs
    }

    /// Plans the engine on this CPU for inputs of `shapes` (default: the build-time
    /// ones): the one call between builder and runtime. Every layer gets its decision
    /// instantiated, or (an undecided layer, while building) the first kernel of the
    /// lowering table that fits it. `types` gives every value's type for these inputs
    /// when the caller knows them (the builder infers them); without them the runtime
    /// plans from the types recorded at build time, or runs the layer interpreter once
    /// on zeros to observe them (dynamic shapes).
    public func compile(shapes: [String: [Int]] = [:], types: [String: (DataType, [Int])]? = nil) throws -> CompiledEngine {
        var inputs = try sampleInputs()
        for (name, shape) in shapes {
            guard let t = inputs[name] else { throw AnvilError.invalidArgument("'\(name)' is not an input of the engine") }
            inputs[name] = try Tensor.zeros(t.dataType, shape: shape)
        }
        let context = ExecutionContext(engine: self)
        let plan = context.plan(for: inputs, types: types)
        let zeroRunFailed = context.zeroRunFailed
        // Layers outside a partial plan run on the interpreter, each for its own reason.
        let interpreted = context.interpretedLayers
        if plan == nil || !interpreted.isEmpty, context.interpretedRuns == 0 {
            // Shapes known but not (wholly) plannable (an If): one interpreted run on zeros finds
            // the layers the interpreter runs on fast kernels, so they are decided for them.
            _ = try? context.interpret(inputs)
        }
        var decisions: [String: LayerDecision] = [:], implementations: [String: String] = [:]
        for layer in graph.layers {
            implementations[layer.name] = plan != nil && interpreted[layer.name] == nil ? plan!.implementation(of: layer.name)
                                                                                        : context.interpretedImplementation(of: layer.name)
        }
        if let plan {
            for (layer, decision) in plan.decisions { decisions[layer] = decision }
        }
        if plan == nil || !interpreted.isEmpty {
            // The interpreter runs convolutions and matrix products on oneDNN where they fit, RoiAlign on its Swift kernel.
            let whole = "the engine runs on the layer interpreter (\(context.planFailure ?? "not planned"))"
            for layer in graph.layers where plan == nil || interpreted[layer.name] != nil {
                let reason = interpreted[layer.name].map { "the layer interpreter runs this layer: \($0)" } ?? whole
                switch context.fastKernel(of: layer.name) {
                case .convolution?: decisions[layer.name] = LayerDecision(kernel: .convolution, postOps: try PostOps(layer))
                case .matmul?: decisions[layer.name] = LayerDecision(kernel: .matmul, postOps: try PostOps(layer))
                case .roiAlign?: decisions[layer.name] = LayerDecision(kernel: .roiAlign)
                default: decisions[layer.name] = .reference(reason)
                }
            }
        }
        let weights = kernels.storableWeights
        let usesOneDNN = (plan?.usesOneDNN ?? false) || !weights.isEmpty || decisions.values.contains { $0.kernel.family == .onednn }
        let required: CPUFeatures
        switch usesOneDNN ? DNNLInstructionSet.effective : .older {
        case .avx512Core: required = [.avx512Core]
        case .avx2: required = [.avx2]
        case .older: required = []
        }
        let isStatic = !graph.valueTypes.isEmpty && graph.valueTypes.values.allSatisfy { $0.concreteShape != nil }
        return CompiledEngine(plan: plan, planFailure: context.planFailure, zeroRunFailed: zeroRunFailed, decisions: decisions,
                              implementations: implementations, packedWeights: weights, memoryPlan: isStatic ? plan?.storedMemoryPlan : nil,
                              requiredFeatures: required)
    }

    /// The engine's runtime inputs and outputs.
    public var inputs: [(name: String, type: TensorType)] { graph.inputs }
    public var outputs: [(name: String, type: TensorType)] { graph.outputs }
}

/// What the runtime made of an engine for one set of input shapes (`Engine.compile`):
/// everything the builder records in the engine file, as typed values.
public struct CompiledEngine {
    /// The plan; nil when the graph runs on the layer interpreter (control flow,
    /// strings, shapes that depend on the data), with the reason.
    public let plan: ExecutionPlan?
    public let planFailure: String?
    /// Whether planning needed a run on zero inputs to observe the shapes, and that run
    /// failed (a sample too small for the model): nothing was planned or decided.
    public let zeroRunFailed: Bool
    /// Every top-level layer's decision as instantiated.
    public let decisions: [String: LayerDecision]
    /// What runs each top-level layer on this CPU, as every report names it: the plan's
    /// kernels ("brg:avx512_core + reorder"), "swift", "view (no copy)", "reference".
    public let implementations: [String: String]
    /// The prepacked weights of the kernels made, one per constant and layout.
    public let packedWeights: [PackedWeights]
    /// The memory plan, for an engine whose shapes are all static.
    public let memoryPlan: StoredMemoryPlan?
    /// The instruction set the kernels were chosen and the weights packed for.
    public let requiredFeatures: CPUFeatures
}

/// Per-thread execution state of an engine. Create one per thread.
///
/// The first run with a new set of input shapes plans the graph for them (memory
/// arena, layouts, oneDNN primitives; `ExecutionPlan`) from the shapes recorded at
/// build time, or, when the engine has dynamic dimensions, from the shapes the
/// interpreter observes on that first run. Later runs with those shapes reuse the
/// plan. Graphs the planner cannot take (control flow, strings, shapes that change
/// with the data) run on the interpreter.
public final class ExecutionContext {
    public let engine: Engine
    /// This context's oneDNN stream, created on first use.
    private var stream: DNNLStream?
    /// Fast kernels by layer (top-level graph) for the interpreter.
    private var fastLayers: [String: FastLayer] = [:]
    /// Layers and input shapes that have no fast kernel (not asked again).
    private var withoutFastLayer: Set<String> = []
    /// What runs inputs of some shapes: a plan of the whole graph, or of the part the
    /// planner can take with the layer interpreter running the rest (`PartialPlan`).
    enum Planned {
        case whole(ExecutionPlan)
        case partial(PartialPlan)
        var plan: ExecutionPlan {
            switch self {
            case .whole(let p): p
            case .partial(let p): p.plan
            }
        }
    }
    /// Plans by input shapes; `nil` entries mark shapes that run on the interpreter.
    private var plans: [[[Int]]: Planned?] = [:]
    /// Input shapes of `plans`, least recently used first.
    private var planOrder: [[[Int]]] = []
    /// How many per-shape plans a context keeps (each holds an activation arena); the
    /// least recently used is dropped beyond it. An engine with fixed shapes needs one.
    public var planCacheCapacity = 8 {
        didSet { planCacheCapacity = max(1, planCacheCapacity); trimPlans() }
    }

    /// Records a plan (or nil: interpret) for these shapes as the most recently used.
    private func remember(_ shapes: [[Int]], _ plan: Planned?) {
        plans[shapes] = .some(plan)
        touch(shapes)
        trimPlans()
    }

    private func touch(_ shapes: [[Int]]) {
        if let i = planOrder.firstIndex(of: shapes) { planOrder.remove(at: i) }
        planOrder.append(shapes)
    }

    private func trimPlans() {
        while planOrder.count > planCacheCapacity {
            let evicted = planOrder.removeFirst()
            if let planned = plans.removeValue(forKey: evicted) ?? nil, planned.plan === lastPlan { lastPlan = nil; lastPartial = nil }
            evictions += 1
        }
        if let limit = evictionLimit, evictions > limit {
            // Shapes that keep changing (a loop body whose values grow): planning costs more than it saves.
            usePlan = false
            plans.removeAll()
            planOrder.removeAll()
            (lastPlan, lastPartial) = (nil, nil)
        }
    }

    /// Plans dropped from the cache so far, and how many a context may drop before it stops planning (nil: no limit).
    private var evictions = 0
    private var evictionLimit: Int?
    /// How many runs with the same input shapes come before a plan is made for them (1: the first).
    private var planAfterSightings = 1
    /// Runs so far per input shapes not yet planned (when `planAfterSightings` > 1).
    private var sightings: [[[Int]]: Int] = [:]
    /// The context whose graph holds this one's (a control-flow body's); it lends its stream.
    private weak var enclosing: ExecutionContext?
    /// When the interpreter frees each value of the graph and its subgraphs, kept across runs.
    private let schedules = GraphInterpreter<EngineGraph>.Schedules()
    /// Contexts of the control-flow bodies of this context's graph, by subgraph.
    private var bodyContexts: [ObjectIdentifier: ExecutionContext] = [:]

    /// Per-shape plans held (for tests and reports).
    public var plannedShapeCount: Int { plans.count }
    /// Control-flow bodies run so far, and how many of them hold a plan (for tests and reports).
    public var bodies: (run: Int, planned: Int) {
        (bodyContexts.count, bodyContexts.values.filter { $0.plans.values.contains { $0 != nil } }.count)
    }
    /// Why the last plan attempt failed, if it did.
    public private(set) var planFailure: String?
    /// Whether `plan(for:types:)` had to observe the shapes on zero inputs and that run failed.
    private(set) var zeroRunFailed = false
    /// Plan the graph (default) or always interpret it (for comparisons).
    public var usePlan = true
    /// When true, each run records every top-level layer's time.
    public var profiling = false
    /// Per-layer times (milliseconds, one per run) of the runs made while profiling, in
    /// layer order, with the kernels that ran the layer as `inspect` names them.
    public private(set) var profile: [(layer: String, kernels: String, milliseconds: [Double])] = []
    private var profileIndex: [String: Int] = [:]
    private var profiledRuns = 0
    /// How many runs the layer interpreter made.
    private(set) var interpretedRuns = 0
    /// Types the interpreter observed on its last top-level run (for planning dynamic shapes).
    private var observed: [String: (DataType, [Int])]?

    public init(engine: Engine) { self.engine = engine }

    /// The plan used for the last run's shapes, if any (arena size, steps); of the planned
    /// part only when the interpreter ran the rest (`interpretedLayers`).
    public private(set) var lastPlan: ExecutionPlan?
    /// The last run's partial plan, when the interpreter ran part of the graph.
    private(set) var lastPartial: PartialPlan?
    /// The layers the interpreter ran in the last run that used a plan for the rest, with the reasons.
    public var interpretedLayers: [String: String] { lastPartial?.reasons ?? [:] }

    /// Runs the engine on named inputs; returns the outputs in declaration order.
    public func run(_ inputs: [String: Tensor]) throws -> [(name: String, value: Tensor)] {
        let g = engine.graph
        try InputCheck.check(inputs, declared: g.inputs, allNames: Set(g.inputs.map(\.name)))
        for (name, t) in inputs { try engine.profile.admit(name, t.shape) }
        if profiling { profiledRuns += 1 }
        let names = g.outputs.map(\.name)
        guard usePlan else { return zip(names, try interpret(inputs)).map { ($0, $1) } }
        let shapes = g.inputs.map { inputs[$0.name]?.shape ?? [] }
        if let entry = plans[shapes] {
            touch(shapes)
            guard let planned = entry else { return zip(names, try interpret(inputs)).map { ($0, $1) } }
            let plan = planned.plan
            let profile: ((String, Double) -> Void)? = profiling ? { layer, ms in self.record(layer, plan.implementation(of: layer), ms) } : nil
            do {
                if case .partial(let partial) = planned {
                    let computed = try plan.run(inputs, stream: try currentStream(), profile: profile)
                    var bound = inputs
                    for (name, value) in zip(partial.boundary, computed) { bound[name] = value }
                    let results = try interpret(bound, skipping: partial.planned)
                    (lastPlan, lastPartial) = (plan, partial)
                    return zip(names, results).map { ($0, $1) }
                }
                (lastPlan, lastPartial) = (plan, nil)
                return zip(names, try plan.run(inputs, stream: try currentStream(), profile: profile)).map { ($0, $1) }
            } catch let mismatch as PlanMismatch {
                // A shape that depends on the data: these shapes run on the interpreter from now on.
                planFailure = mismatch.description
                remember(shapes, nil)
                lastPlan = nil
                return zip(names, try interpret(inputs)).map { ($0, $1) }
            }
        }
        if planAfterSightings > 1 {
            // A control-flow body is planned only for shapes it runs with more than once.
            let seen = (sightings[shapes] ?? 0) + 1
            if seen < planAfterSightings {
                if sightings.count >= 64 { sightings.removeAll() }
                sightings[shapes] = seen
                return zip(names, try interpret(inputs)).map { ($0, $1) }
            }
            sightings[shapes] = nil
        }
        // First sight of these shapes: plan from the build-time shapes, or observe them.
        if let types = staticTypes(inputs), let planned = makePlan(inputs, types: types, memoryPlan: engine.memoryPlan) {
            remember(shapes, planned)
            return try run(inputs)
        }
        observed = [:]
        let results = try interpret(inputs)
        let types = observed ?? [:]
        observed = nil
        remember(shapes, makePlan(inputs, types: types))
        return zip(names, results).map { ($0, $1) }
    }

    /// The plan for inputs of these shapes, made without running when `types` (or the
    /// types recorded at build time) give every value's type; else after one run of the
    /// interpreter that observes them. Nil, with `planFailure` set, when the graph
    /// cannot be planned.
    func plan(for inputs: [String: Tensor], types: [String: (DataType, [Int])]?) -> ExecutionPlan? {
        if let types = types ?? staticTypes(inputs) {
            var all = types
            for (name, t) in inputs { all[name] = (t.dataType, t.shape) }
            let planned = makePlan(inputs, types: all, memoryPlan: engine.memoryPlan)
            lastPlan = planned?.plan
            if case .partial(let p)? = planned { lastPartial = p } else { lastPartial = nil }
            return lastPlan
        }
        do {
            _ = try run(inputs)
            if lastPlan == nil { _ = try run(inputs) }
        } catch {
            planFailure = "running it on zero inputs failed: \(error)"
            zeroRunFailed = true
            return nil
        }
        return lastPlan
    }

    /// What runs a layer on the interpreter, as reports name it.
    func interpretedImplementation(of layer: String) -> String { fastLayers[layer]?.implementation ?? "reference" }

    /// The oneDNN kernel the interpreter made for a layer, if any.
    func fastKernel(of layer: String) -> KernelKind? {
        fastLayers[layer]?.kind
    }

    /// Runs on caller memory with the plan of the last run (call `run(_:)` once with
    /// inputs of these shapes first): inputs and outputs in declaration order,
    /// row-major, exactly their sizes in bytes. No heap allocation happens unless the
    /// plan holds reference layers.
    public func run(inputs: [UnsafeRawBufferPointer], outputs: [UnsafeMutableRawBufferPointer]) throws {
        guard let plan = lastPlan else {
            throw AnvilError.invalidArgument("no plan for these inputs yet: run the engine once with tensors of these shapes (\(planFailure ?? "not planned"))")
        }
        guard lastPartial == nil else {
            throw AnvilError.invalidArgument("the layer interpreter runs part of this engine (\(planFailure ?? "not planned")): run it with tensors")
        }
        try plan.run(inputs: inputs, outputs: outputs, stream: try currentStream())
    }

    /// Executes only the oneDNN primitives of the last run's plan (a baseline for measurements).
    public func executePrimitivesOnly() throws {
        try lastPlan?.executePrimitivesOnly(stream: try currentStream())
    }

    /// The build-time value types when every one is concrete and the inputs have the declared shapes.
    private func staticTypes(_ inputs: [String: Tensor]) -> [String: (DataType, [Int])]? {
        let g = engine.graph
        guard !g.valueTypes.isEmpty else { return nil }
        var types: [String: (DataType, [Int])] = [:]
        for (name, t) in g.valueTypes {
            guard let e = t.elementType, let shape = t.concreteShape else { return nil }
            types[name] = (e, shape)
        }
        for input in g.inputs {
            guard let t = inputs[input.name], let declared = types[input.name] ?? input.type.elementType.flatMap({ e in input.type.concreteShape.map { (e, $0) } }),
                  declared.0 == t.dataType, declared.1 == t.shape else { return nil }
            types[input.name] = declared
        }
        return types
    }

    /// The plan of the whole graph; failing that, of the part the planner can take
    /// (`PartialPlan`); nil, with `planFailure` set, when neither can be made.
    private func makePlan(_ inputs: [String: Tensor], types: [String: (DataType, [Int])], memoryPlan: StoredMemoryPlan? = nil) -> Planned? {
        let g = engine.graph
        do {
            let plan = try ExecutionPlan(layers: g.layers, constants: engine.constants,
                                         inputs: g.inputs.map { ($0.name, inputs[$0.name]!.dataType, inputs[$0.name]!.shape) },
                                         outputs: g.outputs.map(\.name), types: types, engine: engine.dnnl, shared: engine.kernels,
                                         memoryPlan: memoryPlan)
            planFailure = nil
            return .whole(plan)
        } catch {
            planFailure = "\(error)"
        }
        guard let partial = try? PartialPlan.make(engine, inputs: inputs, types: types) else { return nil }
        return .partial(partial)
    }

    /// Adds a step's time to its layer's time in the current run.
    private func record(_ layer: String, _ implementation: String, _ ms: Double) {
        guard let i = profileIndex[layer] else {
            profileIndex[layer] = profile.count
            profile.append((layer, implementation, [ms]))
            return
        }
        if profile[i].milliseconds.count == profiledRuns { profile[i].milliseconds[profiledRuns - 1] += ms } else { profile[i].milliseconds.append(ms) }
    }

    /// Runs the graph layer by layer on the graph interpreter: oneDNN for the top-level
    /// layers decided (or, while building, undecided) for a oneDNN convolution or
    /// matmul, the Swift kernel for RoiAlign, the observed types recorded when
    /// planning dynamic shapes, per-layer times when profiling.
    func interpret(_ inputs: [String: Tensor], skipping: Set<String> = []) throws -> [Tensor] {
        (lastPlan, lastPartial) = (nil, nil)
        interpretedRuns += 1
        var interpreter = GraphInterpreter<EngineGraph> { $0.opset }
        interpreter.evaluateFast = { layer, depth, context in
            guard depth == 0, let fast = try self.fastLayer(layer, context) else { return nil }
            return [try fast.run(context, stream: try self.currentStream())]
        }
        if observed != nil {
            interpreter.observe = { name, value, depth in
                if depth == 0 { self.observed?[name] = (value.dataType, value.shape) }
            }
        }
        interpreter.runSubgraph = { _, depth, body, values, outer in
            guard depth == 0, self.usePlan else { return nil }
            return try self.runBody(body, values, outer)
        }
        if profiling {
            interpreter.time = { layer, depth, ms in
                guard depth == 0 else { return }
                self.record(layer.name, self.interpretedImplementation(of: layer.name), ms)
            }
        }
        return try interpreter.run(engine.graph, inputs: inputs, skipping: skipping, schedules: schedules)
    }

    /// Runs a control-flow body of this context's graph (an If branch, a Loop or Scan
    /// body) as an engine of its own (`Engine.body`) on a context of its own, which plans
    /// it once it has run twice with the same shapes: its layers then run on oneDNN and
    /// Swift kernels in an arena like any graph's, nested bodies likewise. A context that
    /// keeps meeting new shapes (a loop whose values grow) stops planning and interprets.
    private func runBody(_ body: EngineGraph, _ values: [Tensor], _ outer: (String) throws -> Tensor?) throws -> [Tensor] {
        let context: ExecutionContext
        if let existing = bodyContexts[ObjectIdentifier(body)] {
            context = existing
        } else {
            context = ExecutionContext(engine: try engine.body(body))
            context.enclosing = self
            context.planAfterSightings = 2
            context.evictionLimit = 2 * context.planCacheCapacity
            bodyContexts[ObjectIdentifier(body)] = context
        }
        var inputs: [String: Tensor] = [:]
        for (i, input) in context.engine.graph.inputs.enumerated() {
            if i < values.count {
                inputs[input.name] = values[i]
            } else {
                guard let value = try outer(input.name) else {
                    throw AnvilError.invalidGraph(graph: body.name, reason: "'\(input.name)' has no value in the enclosing graphs")
                }
                inputs[input.name] = value
            }
        }
        return try context.run(inputs).map(\.value)
    }

    func currentStream() throws -> DNNLStream {
        if let enclosing { return try enclosing.currentStream() }
        if let stream { return stream }
        let s = try DNNLStream(engine: engine.dnnl)
        stream = s
        return s
    }

    /// The layer's fast kernel for this input shape: reused, or created on first sight.
    func fastLayer(_ layer: Layer, _ context: EvalContext) throws -> FastLayer? {
        guard let x = context.optionalInput(0), x.dataType == .float else { return nil }
        if let existing = fastLayers[layer.name], existing.inputShape == x.shape { return existing }
        let key = "\(layer.name)|\(x.shape)"
        guard !withoutFastLayer.contains(key) else { return nil }
        guard let created = try FastLayer.make(layer, constants: engine.graph.constants, inputShape: x.shape, engine: engine.dnnl) else {
            withoutFastLayer.insert(key)
            return nil
        }
        fastLayers[layer.name] = created
        return created
    }
}
