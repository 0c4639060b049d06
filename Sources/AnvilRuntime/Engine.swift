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
    let kernels = SharedKernels()

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
        // A file being written has no stable bytes yet: read its encoding.
        let file = file.storage != nil ? file : try file.encoded().withUnsafeBytes { try EngineFile.decode($0, file: name) }
        let packed = try file.stableSection("WEIGHTS").map { try WeightsSection.decode($0, file: name) } ?? []
        guard let section = file.stableSection("GRAPH") else {
            throw AnvilError.invalidModel(file: name, field: "engine", reason: "has no GRAPH section")
        }
        let graph = try EngineCodec.decode(section, file: name, packed: packed, owner: file.storage)
        try self.init(graph: graph, producer: file.producer, requiredFeatures: file.requiredFeatures,
                      profile: try file.withSection("PROFILE") { try ShapeProfile.decode($0, file: name) } ?? ShapeProfile(),
                      memoryPlan: try file.withSection("MEMPLAN") { try MemoryPlanSection.decode($0, file: name) }, name: name)
    }

    /// An engine over a graph in memory (as the builder makes it). A graph read from a
    /// file keeps the file's bytes alive through its constants.
    public init(graph: EngineGraph, producer: String, requiredFeatures: CPUFeatures, profile: ShapeProfile,
                memoryPlan: StoredMemoryPlan? = nil, name: String) throws {
        self.graph = graph
        self.profile = profile
        self.memoryPlan = memoryPlan
        self.producer = producer
        self.requiredFeatures = requiredFeatures
        dnnl = try DNNLEngine()
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

    /// Serializes an engine into an engine file: the graph, the profile, the memory
    /// plan, and the prepacked weights its kernels made (`weights`); constants in
    /// `packedOnly` are stored only prepacked.
    public static func file(for graph: EngineGraph, producer: String, requiredFeatures: CPUFeatures, metadata: [UInt8],
                            profile: ShapeProfile = ShapeProfile(), weights: [PackedWeights] = [], packedOnly: Set<String> = [],
                            memoryPlan: StoredMemoryPlan? = nil) throws -> EngineFile {
        var sections: [(tag: String, bytes: [UInt8])] = [("META", metadata), ("GRAPH", try EngineCodec.encode(graph, packedOnly: packedOnly))]
        if !profile.isEmpty { sections.append(("PROFILE", profile.encoded())) }
        if let memoryPlan { sections.append(("MEMPLAN", MemoryPlanSection.encode(memoryPlan))) }
        if !weights.isEmpty { sections.append(("WEIGHTS", WeightsSection.encode(weights))) }
        return EngineFile(producer: producer, requiredFeatures: requiredFeatures, sections: sections)
    }

    /// The prepacked weights of the kernels made so far (by running the engine once), for writing it.
    public var storableWeights: [PackedWeights] { kernels.storableWeights }

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
    /// without a profile become 1.
    public func sampleInputs() throws -> [String: Tensor] {
        var inputs: [String: Tensor] = [:]
        for (name, type) in graph.inputs {
            let shape = profile.opt[name] ?? graph.valueTypes[name]?.concreteShape ?? (type.dims ?? []).map { $0.value ?? 1 }
            inputs[name] = try Tensor.zeros(type.elementType ?? .float, shape: shape)
        }
        return inputs
    }

    /// Plans the engine for its build-time shapes on this CPU (running it once on
    /// zeros), for reports; nil with the reason when the graph runs on the interpreter.
    public func planForReport() throws -> (plan: ExecutionPlan?, failure: String?) {
        let context = ExecutionContext(engine: self)
        let inputs = try sampleInputs()
        _ = try context.run(inputs)
        _ = try context.run(inputs)
        return (context.lastPlan, context.planFailure)
    }

    /// The engine's runtime inputs and outputs.
    public var inputs: [(name: String, type: TensorType)] { graph.inputs }
    public var outputs: [(name: String, type: TensorType)] { graph.outputs }
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
    /// Plans by input shapes; `nil` entries mark shapes that run on the interpreter.
    private var plans: [[[Int]]: ExecutionPlan?] = [:]
    /// Why the last plan attempt failed, if it did.
    public private(set) var planFailure: String?
    /// Plan the graph (default) or always interpret it (for comparisons).
    public var usePlan = true
    /// When true, each run records every top-level layer's time.
    public var profiling = false
    /// Per-layer times (milliseconds) of the runs made while profiling, in layer order.
    public private(set) var profile: [(layer: String, tactic: String, milliseconds: [Double])] = []
    /// Types the interpreter observed on its last top-level run (for planning dynamic shapes).
    private var observed: [String: (DataType, [Int])]?

    public init(engine: Engine) { self.engine = engine }

    /// The plan used for the last run's shapes, if any (arena size, steps).
    public private(set) var lastPlan: ExecutionPlan?

    /// Runs the engine on named inputs; returns the outputs in declaration order.
    public func run(_ inputs: [String: Tensor]) throws -> [(name: String, value: Tensor)] {
        let g = engine.graph
        try InputCheck.check(inputs, declared: g.inputs, allNames: Set(g.inputs.map(\.name)))
        for (name, t) in inputs { try engine.profile.admit(name, t.shape) }
        let names = g.outputs.map(\.name)
        guard usePlan else { return zip(names, try interpret(inputs)).map { ($0, $1) } }
        let shapes = g.inputs.map { inputs[$0.name]?.shape ?? [] }
        if let entry = plans[shapes] {
            guard let plan = entry else { return zip(names, try interpret(inputs)).map { ($0, $1) } }
            do {
                lastPlan = plan
                return zip(names, try plan.run(inputs, stream: try currentStream(), profile: profiling ? record : nil)).map { ($0, $1) }
            } catch let mismatch as PlanMismatch {
                // A shape that depends on the data: these shapes run on the interpreter from now on.
                planFailure = mismatch.description
                plans[shapes] = .some(nil)
                lastPlan = nil
                return zip(names, try interpret(inputs)).map { ($0, $1) }
            }
        }
        // First sight of these shapes: plan from the build-time shapes, or observe them.
        if let types = staticTypes(inputs), let plan = makePlan(inputs, types: types, memoryPlan: engine.memoryPlan) {
            plans[shapes] = .some(plan)
            return try run(inputs)
        }
        observed = [:]
        let results = try interpret(inputs)
        let types = observed ?? [:]
        observed = nil
        plans[shapes] = .some(makePlan(inputs, types: types))
        return zip(names, results).map { ($0, $1) }
    }

    /// Runs on caller memory with the plan of the last run (call `run(_:)` once with
    /// inputs of these shapes first): inputs and outputs in declaration order,
    /// row-major, exactly their sizes in bytes. No heap allocation happens unless the
    /// plan holds reference layers.
    public func run(inputs: [UnsafeRawBufferPointer], outputs: [UnsafeMutableRawBufferPointer]) throws {
        guard let plan = lastPlan else {
            throw AnvilError.invalidArgument("no plan for these inputs yet: run the engine once with tensors of these shapes (\(planFailure ?? "not planned"))")
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

    private func makePlan(_ inputs: [String: Tensor], types: [String: (DataType, [Int])], memoryPlan: StoredMemoryPlan? = nil) -> ExecutionPlan? {
        let g = engine.graph
        do {
            let plan = try ExecutionPlan(layers: g.layers, constants: engine.constants,
                                         inputs: g.inputs.map { ($0.name, inputs[$0.name]!.dataType, inputs[$0.name]!.shape) },
                                         outputs: g.outputs.map(\.name), types: types, engine: engine.dnnl, shared: engine.kernels,
                                         memoryPlan: memoryPlan)
            planFailure = nil
            return plan
        } catch {
            planFailure = "\(error)"
            return nil
        }
    }

    private func record(_ layer: String, _ implementation: String, _ ms: Double) {
        if let i = profile.firstIndex(where: { $0.layer == layer && $0.tactic == implementation }) { profile[i].milliseconds.append(ms) }
        else { profile.append((layer, implementation, [ms])) }
    }

    /// Runs the graph layer by layer on the graph interpreter: oneDNN for the top-level
    /// layers the builder gave a oneDNN tactic, the observed types recorded when
    /// planning dynamic shapes, per-layer times when profiling.
    func interpret(_ inputs: [String: Tensor]) throws -> [Tensor] {
        lastPlan = nil
        var interpreter = GraphInterpreter<EngineGraph> { $0.opset }
        interpreter.evaluateFast = { layer, depth, context in
            guard layer.tactic.hasPrefix("onednn"), depth == 0, let fast = try self.fastLayer(layer, context) else { return nil }
            return [try fast.run(context, stream: try self.currentStream())]
        }
        if observed != nil {
            interpreter.observe = { name, value, depth in
                if depth == 0 { self.observed?[name] = (value.dataType, value.shape) }
            }
        }
        if profiling {
            interpreter.time = { layer, depth, ms in
                guard depth == 0 else { return }
                let tactic = layer.tactic.hasPrefix("onednn") ? (self.fastLayers[layer.name]?.implementation ?? "reference") : "reference"
                if let i = self.profile.firstIndex(where: { $0.layer == layer.name }) { self.profile[i].milliseconds.append(ms) }
                else { self.profile.append((layer.name, "\(layer.opType): \(tactic)", [ms])) }
            }
        }
        return try interpreter.run(engine.graph, inputs: inputs)
    }

    func currentStream() throws -> DNNLStream {
        if let stream { return stream }
        let s = try DNNLStream(engine: engine.dnnl)
        stream = s
        return s
    }

    /// The layer's oneDNN kernel for these input shapes: reused, or created on first sight.
    func fastLayer(_ layer: Layer, _ context: EvalContext) throws -> FastLayer? {
        let shapes = context.inputs.map { $0?.shape }
        if let existing = fastLayers[layer.name], existing.inputShapes == shapes { return existing }
        guard let created = try FastLayer.make(context, engine: engine.dnnl) else { return nil }
        fastLayers[layer.name] = created
        return created
    }
}
