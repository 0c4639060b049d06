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
    /// How many shared oneDNN kernels the engine holds now (at most `SharedKernels`'
    /// bound of shapes per layer).
    public var sharedKernelCount: Int { kernels.count }

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

    /// The engine with every layer's output marked as a graph output, as Polygraphy's
    /// --mark-all does: the same layers, decisions and kernels; a value that would have been
    /// overwritten in place by a later layer keeps its own storage.
    public func markingAllOutputs() throws -> Engine {
        var outputs = graph.outputs
        var seen = Set(outputs.map(\.name))
        for layer in graph.layers {
            for o in layer.outputs where !o.isEmpty && seen.insert(o).inserted { outputs.append((o, graph.valueTypes[o] ?? .unknown)) }
        }
        let marked = EngineGraph(name: graph.name, inputs: graph.inputs, outputs: outputs, constants: graph.constants, layers: graph.layers,
                                 valueTypes: graph.valueTypes)
        return try Engine(graph: marked, producer: producer, requiredFeatures: requiredFeatures, profile: profile, memoryPlan: nil,
                          name: "", dnnl: dnnl, kernels: kernels)
    }

    /// Every layer's output for `inputs`, by value name, computed by the marked engine
    /// (`markingAllOutputs`).
    public func layerOutputs(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        Dictionary(try ExecutionContext(engine: try markingAllOutputs()).run(inputs).map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
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
        // Element types only: a Loop's carried values may change shape from iteration to iteration.
        let inputs = sub.inputs.map { ($0.name, TensorType($0.type.elementType, nil)) } + outer.map { ($0, TensorType(graph.valueTypes[$0]?.elementType, nil)) }
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
        context.specializeIfs = false
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
        case .avx512Core: required = decisions.values.contains { $0.precision == .bf16 } ? [.avx512Core, .avx512Bf16] : [.avx512Core]
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
