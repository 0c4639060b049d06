import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilOps
import AnvilPasses
import AnvilRuntime
import Foundation

/// Turns an ONNX model into an engine: optimizes the graph, converts it into the
/// runtime's layer graph and serializes it. Convolutions and matrix products with
/// constant float weights get the oneDNN tactic, everything else the reference
/// kernels; tactic timing, the memory plan and prepacked weights in the file
/// follow (issue 4).
public struct EngineBuilder {
    public var pipeline = PipelineOptions()
    /// Skip the optimizer (for debugging).
    public var optimize = true
    /// Input shapes to build for (trtexec's --shapes or --min/opt/maxShapes).
    public var profile = ShapeProfile()
    /// Time convolution layouts on this CPU and keep the fastest (needs static shapes).
    public var timeTactics = true
    /// Whether convolutions may use oneDNN's Winograd kernels (--tacticSources=-WINOGRAD turns them off).
    public var winograd = true
    /// Timings to reuse and extend (--timingCacheFile).
    public var timingCache = TimingCache()
    /// Reports tactic-timing progress: layers done, layers in all.
    public var progress: ((Int, Int) -> Void)?
    public init() {}

    public struct Result {
        public let file: EngineFile
        public let statistics: PassContext?
        /// The engine in memory, planned once on this CPU (its kernels made).
        public let engine: Engine
        /// That plan for the build-time shapes, or why there is none.
        public let plan: ExecutionPlan?
        public let planFailure: String?
        public var graph: EngineGraph { engine.graph }
    }

    public func build(_ model: Model, name: String) throws -> Result {
        let missing = ReferenceExecutor(model: model).unsupportedNodes()
        guard missing.isEmpty else {
            throw AnvilError.invalidModel(file: name, field: "graph", reason: "cannot build: \(missing.count) nodes use unsupported ops: \(missing.joined(separator: ", "))")
        }
        try profile.check(against: model.graph.runtimeInputs.map { ($0.name, $0.type) })
        // Fixed shapes become part of the graph, so the optimizer folds what depends on them.
        for (i, input) in model.graph.inputs.enumerated() where profile.isFixed(input.name) {
            guard let e = input.type.elementType else { continue }
            model.graph.inputs[i].type = TensorType(e, shape: profile.opt[input.name]!)
        }
        let context = optimize ? try PipelineRunner(options: pipeline).run(model) : nil
        // Record every value's type, for the optimal shapes, for the runtime's plan.
        let declared = model.graph.inputs
        for (i, input) in model.graph.inputs.enumerated() {
            if let opt = profile.opt[input.name], let e = input.type.elementType { model.graph.inputs[i].type = TensorType(e, shape: opt) }
        }
        model.graph.valueTypes = [:]
        var inference = ShapeInference(model: model)
        try inference.run()
        for input in model.graph.inputs where model.graph.initializers[input.name] == nil { model.graph.valueTypes[input.name] = input.type }
        model.graph.inputs = declared
        let graph = try Self.convert(model.graph, model: model)
        if timeTactics { try chooseTactics(graph) }
        let meta = """
            {"producer":"anvil","model":"\(name.replacingOccurrences(of: "\"", with: "'"))","layers":\(graph.layers.count)}
            """
        // Plan the engine once for its build-time shapes: that makes every kernel, whose
        // prepacked weights and the memory plan go into the file.
        let producer = "anvil 0.1"
        let engine = try Engine(graph: graph, producer: producer, requiredFeatures: [], profile: profile, name: name)
        var plan: ExecutionPlan?, failure: String?
        do { (plan, failure) = try engine.planForReport() } catch { failure = "running it on zero inputs failed: \(error)" }
        let weights = engine.storableWeights
        // Weights stored prepacked are not stored plain too: a layer that needs them plain unpacks
        // them. Winograd-transformed weights cannot be read back, so theirs stay plain as well.
        let packedOnly = Set(weights.filter(\.isUnpackable).map(\.constant))
        let isStatic = !graph.valueTypes.isEmpty && graph.valueTypes.values.allSatisfy { $0.concreteShape != nil }
        // The engine needs the instruction set its kernels were chosen and its weights packed for.
        let implementations = plan?.stepSummary.map(\.implementation) ?? []
        let required: CPUFeatures = implementations.contains { $0.contains("avx512") } ? [.avx512Core]
            : implementations.contains { $0.contains("avx2") } ? [.avx2] : []
        let file = try Engine.file(for: graph, producer: producer, requiredFeatures: required, metadata: Array(meta.utf8), profile: profile,
                                   weights: weights, packedOnly: packedOnly, memoryPlan: isStatic ? plan?.storedMemoryPlan : nil)
        return Result(file: file, statistics: context, engine: engine, plan: plan, planFailure: failure)
    }

    /// Times each convolution's layouts for the build-time shapes and records the choice in its tactic.
    func chooseTactics(_ graph: EngineGraph) throws {
        var types: [String: (DataType, [Int])] = [:]
        for (name, t) in graph.valueTypes {
            if let e = t.elementType, let shape = t.concreteShape { types[name] = (e, shape) }
        }
        let constants = graph.constants
        let machine = "\(CPUFeatures.host)|\(ProcessInfo.processInfo.activeProcessorCount)cpu"
        let chosen = TacticSelector.chooseConvolutionLayouts(layers: graph.layers, constants: constants, types: types, engine: try DNNLEngine(),
                                                             cache: timingCache, machine: machine, winograd: winograd, progress: progress)
        for i in graph.layers.indices { if let t = chosen[graph.layers[i].name] { graph.layers[i].tactic = t } }
    }

    /// IR graph → engine graph, recursively for subgraphs.
    static func convert(_ g: Graph, model: Model, topLevel: Bool = true) throws -> EngineGraph {
        let layers = try g.nodes.map { node -> Layer in
            var attributes = node.attributes
            for (key, value) in node.attributes {
                switch value {
                case .graph(let s): attributes[key] = .graph(try convert(irGraph(s), model: model, topLevel: false))
                case .graphs(let ss): attributes[key] = .graphs(try ss.map { try convert(irGraph($0), model: model, topLevel: false) })
                default: break
                }
            }
            return Layer(name: node.name, opType: node.opType, domain: node.domain, opset: model.opsetVersion(domain: node.domain) ?? 1,
                         inputs: node.inputs, outputs: node.outputs, attributes: attributes, fusedFrom: node.fusedFrom,
                         tactic: topLevel && FastLayer.supports(opType: node.opType, domain: node.domain, weights: node.inputs.count > 1 ? g.initializers[node.inputs[1]] : nil,
                                                                attributes: node.attributes) ? "onednn" : "reference")
        }
        return EngineGraph(name: g.name, inputs: g.inputs.filter { g.initializers[$0.name] == nil }.map { ($0.name, $0.type) },
                           outputs: g.outputs.map { ($0.name, $0.type) },
                           constants: ConstantStore(g.initializerOrder.compactMap { n in g.initializers[n].map { (n, $0) } }), layers: layers,
                           valueTypes: topLevel ? g.valueTypes.filter { g.initializers[$0.key] == nil } : [:])
    }

    static func irGraph(_ s: any Subgraph) throws -> Graph {
        guard let g = s as? Graph else { throw AnvilError.invalidGraph(graph: s.name, reason: "is not an IR graph") }
        return g
    }
}
