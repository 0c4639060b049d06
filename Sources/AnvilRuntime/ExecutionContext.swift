import AnvilCore
import AnvilEngine
import AnvilKernels
import Dispatch
import Foundation

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
        /// A plan of the graph with its shape-conditioned Ifs inlined (`Specialization`),
        /// whose extra outputs are the conditions it assumes.
        case specialized(ExecutionPlan, guards: [(name: String, value: Bool)])
        var plan: ExecutionPlan {
            switch self {
            case .whole(let p): p
            case .partial(let p): p.plan
            case .specialized(let p, _): p
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

    /// Whether plans inline the Ifs whose conditions the input shapes decide (`Specialization`).
    /// The builder's context does not: it decides the layers of the graph as written.
    public var specializeIfs = true
    /// Input shapes whose specialized plan met a condition other than planned.
    private var unspecialized: Set<[[Int]]> = []
    /// Whether the last run's plan assumed conditions it checks on every run.
    private var lastGuarded = false
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
        // Inputs holding NaN or ±∞ run on plans of their own, whose kernels keep them as ONNX
        // says (ExecutionPlan.assumesFiniteInputs); the key's extra entry tells them apart.
        let finite = !inputs.values.contains(where: NonFinite.anyIn)
        let shapes = g.inputs.map { inputs[$0.name]?.shape ?? [] } + (finite ? [] : [[-1]])
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
                    (lastPlan, lastPartial, lastGuarded) = (plan, partial, false)
                    return zip(names, results).map { ($0, $1) }
                }
                if case .specialized(_, let guards) = planned {
                    let computed = try plan.run(inputs, stream: try currentStream(), profile: profile)
                    let conditions = computed.suffix(guards.count)
                    guard zip(conditions, guards).allSatisfy({ $0.count == 1 && $0.dataType == .bool && $0.bools[0] == $1.value }) else {
                        // A condition the plan took as fixed by the shapes changed.
                        return try replanUnspecialized(inputs, shapes: shapes, dropping: plan)
                    }
                    (lastPlan, lastPartial, lastGuarded) = (plan, nil, true)
                    return zip(names, computed.prefix(names.count)).map { ($0, $1) }
                }
                (lastPlan, lastPartial, lastGuarded) = (plan, nil, false)
                return zip(names, try plan.run(inputs, stream: try currentStream(), profile: profile)).map { ($0, $1) }
            } catch let mismatch as PlanMismatch {
                if case .specialized = planned {
                    // The inlined branches met shapes other than planned.
                    return try replanUnspecialized(inputs, shapes: shapes, dropping: plan)
                }
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
        if let types = staticTypes(inputs), let planned = makePlan(inputs, types: types, memoryPlan: finite ? engine.memoryPlan : nil, finite: finite) {
            remember(shapes, planned)
            return try run(inputs)
        }
        observed = [:]
        let results = try interpret(inputs)
        let types = observed ?? [:]
        observed = nil
        remember(shapes, makePlan(inputs, types: types, finite: finite))
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
            let finite = !inputs.values.contains(where: NonFinite.anyIn)
            let planned = makePlan(inputs, types: all, memoryPlan: finite ? engine.memoryPlan : nil, finite: finite)
            lastPlan = planned?.plan
            if case .partial(let p)? = planned { lastPartial = p } else { lastPartial = nil }
            if case .specialized? = planned { lastGuarded = true } else { lastGuarded = false }
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
    func interpretedImplementation(of layer: String) -> String {
        if let fast = fastLayers[layer] { return fast.implementation }
        return usePlan && bodyHolders.contains(layer) ? "control flow" : "reference"
    }

    /// The graph's layers that hold control-flow bodies (run on contexts of their own).
    private lazy var bodyHolders = Set(engine.graph.layers.filter { !GraphInterpreter<EngineGraph>.subgraphs(of: $0).isEmpty }.map(\.name))

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
        guard !lastGuarded else {
            throw AnvilError.invalidArgument("the plan of these shapes takes the branches its If conditions chose and checks them on every run: run it with tensors")
        }
        guard plan.assumesFiniteInputs, plan.holdsNonFinite(inputs) else {
            return try plan.run(inputs: inputs, outputs: outputs, stream: try currentStream())
        }
        // NaN or ±∞: the plan for finite inputs would not keep them. These inputs run as
        // tensors on a plan that does; the next finite run takes the fast plan again.
        let fast = (lastPlan, lastPartial, lastGuarded)
        defer { (lastPlan, lastPartial, lastGuarded) = fast }
        let names = engine.graph.inputs.map(\.name)
        let results = try run(Dictionary(uniqueKeysWithValues: zip(names, try plan.inputTensors(inputs))))
        for ((name, value), buffer) in zip(results, outputs) {
            try value.withHostBytes { raw in
                guard raw.count == buffer.count else {
                    throw AnvilError.invalidTensor(name: name, reason: "output buffer has \(buffer.count) bytes, the result has \(raw.count)")
                }
                if let to = buffer.baseAddress, let from = raw.baseAddress { to.copyMemory(from: from, byteCount: raw.count) }
            }
        }
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
    private func makePlan(_ inputs: [String: Tensor], types: [String: (DataType, [Int])], memoryPlan: StoredMemoryPlan? = nil, finite: Bool) -> Planned? {
        let g = engine.graph
        if specializeIfs, hasIfs, !unspecialized.contains(g.inputs.map { inputs[$0.name]?.shape ?? [] }) {
            if let specialized = try? specializedPlan(inputs, finite: finite) {
                planFailure = nil
                return specialized
            }
            // No If the shapes decide, or a specialized graph the planner cannot take whole: as
            // both follow from the graph rather than the shapes, later shapes are not tried.
            specializeIfs = false
        }
        do {
            let plan = try ExecutionPlan(layers: g.layers, constants: engine.constants,
                                         inputs: g.inputs.map { ($0.name, inputs[$0.name]!.dataType, inputs[$0.name]!.shape) },
                                         outputs: g.outputs.map(\.name), types: types, engine: engine.dnnl, shared: engine.kernels,
                                         memoryPlan: memoryPlan, finiteInputs: finite)
            planFailure = nil
            return .whole(plan)
        } catch {
            planFailure = "\(error)"
        }
        guard let partial = try? PartialPlan.make(engine, inputs: inputs, types: types, finite: finite) else { return nil }
        return .partial(partial)
    }

    /// The plan of the graph with its shape-conditioned Ifs inlined for these inputs'
    /// shapes (`Specialization`), when it has such Ifs and the result can be planned whole.
    private func specializedPlan(_ inputs: [String: Tensor], finite: Bool) throws -> Planned? {
        // The interpreter runs of specialization use the fast kernels (inlined layers' weights from the specialized graph's constants).
        let fast: Specialization.FastKernels = { layer, context, constants in
            guard let kernel = try self.fastLayer(layer, context, constants: constants) else { return nil }
            return [try kernel.run(context, stream: try self.currentStream())]
        }
        guard let specialization = try Specialization.make(engine, inputs: inputs, fast: fast) else { return nil }
        let graph = specialization.graph
        let plan = try ExecutionPlan(layers: graph.layers, constants: graph.constants,
                                     inputs: graph.inputs.map { ($0.name, inputs[$0.name]!.dataType, inputs[$0.name]!.shape) },
                                     outputs: graph.outputs.map(\.name) + specialization.guards.map(\.name), types: specialization.types,
                                     engine: engine.dnnl, shared: engine.kernels, finiteInputs: finite)
        return .specialized(plan, guards: specialization.guards)
    }

    /// Drops the specialized plan of these shapes and runs them again, planned without
    /// specialization from now on.
    private func replanUnspecialized(_ inputs: [String: Tensor], shapes: [[Int]], dropping plan: ExecutionPlan) throws -> [(name: String, value: Tensor)] {
        plans.removeValue(forKey: shapes)
        planOrder.removeAll { $0 == shapes }
        unspecialized.insert(shapes)
        if lastPlan === plan { (lastPlan, lastPartial) = (nil, nil) }
        return try run(inputs)
    }

    /// Whether the graph holds an If at its top level.
    private lazy var hasIfs = engine.graph.layers.contains { $0.opType == "If" && $0.domain.isEmpty }

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
        interpreter.runSubgraph = { layer, depth, body, values, outer in
            guard depth == 0, self.usePlan else { return nil }
            return try self.runBody(of: layer.name, body, values, outer)
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
    private func runBody(of layer: String, _ body: EngineGraph, _ values: [Tensor], _ outer: (String) throws -> Tensor?) throws -> [Tensor] {
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
        context.profiling = profiling
        let before = profiling ? context.profile.map(\.milliseconds.count) : []
        let results = try context.run(inputs).map(\.value)
        if profiling {
            // The body's layers that ran, under the layer holding the body (their time is part of its own).
            for (i, entry) in context.profile.enumerated() where i >= before.count || entry.milliseconds.count > before[i] {
                record([layer, body.name, entry.layer].joined(separator: Self.nestedLayerSeparator), entry.kernels, entry.milliseconds[entry.milliseconds.count - 1])
            }
        }
        return results
    }

    /// Joins a layer's name, its control-flow body's and a layer's in that body in the
    /// profile ("If_12 ▸ else_branch ▸ /nms"): that time is part of the outer layer's, so
    /// totals leave it out.
    public static let nestedLayerSeparator = " ▸ "

    func currentStream() throws -> DNNLStream {
        if let enclosing { return try enclosing.currentStream() }
        if let stream { return stream }
        let s = try DNNLStream(engine: engine.dnnl)
        stream = s
        return s
    }

    /// The layer's fast kernel for this input shape: reused, or created on first sight.
    func fastLayer(_ layer: Layer, _ context: EvalContext, constants: ConstantStore? = nil) throws -> FastLayer? {
        guard let x = context.optionalInput(0), [.float, .uint8, .int8].contains(x.dataType) else { return nil }
        if let existing = fastLayers[layer.name], existing.inputShape == x.shape { return existing }
        let key = "\(layer.name)|\(x.shape)"
        guard !withoutFastLayer.contains(key) else { return nil }
        guard let created = try FastLayer.make(layer, constants: constants ?? engine.graph.constants, inputShape: x.shape, engine: engine.dnnl) else {
            withoutFastLayer.insert(key)
            return nil
        }
        fastLayers[layer.name] = created
        return created
    }
}
