import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilOps
import AnvilPasses
import AnvilRuntime
import Foundation

/// Turns an ONNX model into an engine, as TensorRT's builder does: optimizes a copy
/// of the graph, converts it into the runtime's layer graph, times convolution
/// tactics on this CPU, then asks the runtime to compile it (`Engine.compile`), which
/// decides every other layer's kernel from the lowering table and returns the
/// decisions, the prepacked weights, the memory plan and the instruction set needed;
/// all of it goes into the engine file.
public struct EngineBuilder {
    public var pipeline = PipelineOptions()
    /// Skip the optimizer (for debugging).
    public var optimize = true
    /// Input shapes to build for (trtexec's --shapes or --min/opt/maxShapes).
    public var profile = ShapeProfile()
    /// Time convolution tactics on this CPU and keep the fastest.
    public var timeTactics = true
    /// Whether convolutions may use oneDNN's Winograd kernels (--tacticSources=-WINOGRAD turns them off).
    public var winograd = true
    /// Timings to reuse and extend (--timingCacheFile).
    public var timingCache = TimingCache()
    /// Which layers compute in a reduced precision (--bf16, --layerPrecisions); FP32 by default.
    public var precision = PrecisionPolicy()
    /// The CPU the engine is built for (its features decide which precisions are offered).
    public var host = CPUFeatures.host
    /// How close to the FP32 engine a reduced-precision engine must stay on `calibration`
    /// (--accuracyBudget); layers are moved back to FP32 until it holds.
    public var budget: AccuracyBudget?
    /// Input samples the budget is measured on and INT8 calibrates on (--calib).
    public var calibration: [[String: Tensor]] = []
    /// INT8's activation ranges: given (a calibration cache), or measured on `calibration`
    /// by `calibrationMethod` when the precision policy asks for INT8.
    public var int8Calibration: Int8Calibration?
    public var calibrationMethod = CalibrationMethod.percentile
    public var calibrationPercentile = 99.99
    /// Reports tactic-timing progress: layers done, layers in all.
    public var progress: ((Int, Int) -> Void)?
    /// Reports calibration progress: samples run, samples to run.
    public var calibrationProgress: ((Int, Int) -> Void)?
    public init() {}

    public struct Result {
        public let file: EngineFile
        public let statistics: PassContext?
        /// The engine in memory, with the kernels its compilation made (what the file records).
        public let engine: Engine
        /// What the runtime made of it for the build-time shapes.
        public let compiled: CompiledEngine
        /// What shape inference found questionable but not fatal (declared shapes the computation contradicts).
        public let warnings: [String]
        public var graph: EngineGraph { engine.graph }
        /// Under an accuracy budget: each weighted layer's precision and why, and the budget's
        /// measure on the calibration data (cosine, relative error or agreement).
        public var precisionChoices: [PrecisionChoice] = []
        public var measuredBudget: Double? = nil
        /// The INT8 ranges the build used (for --calibCache), and the layers made INT8.
        public var int8Calibration: Int8Calibration? = nil
        public var int8Layers: [String] = []
    }

    /// The INT8 ranges: given, or measured by the FP32 engine of `source` on `calibration`.
    func calibrated(_ source: Model, name: String) throws -> Int8Calibration {
        if let int8Calibration { return int8Calibration }
        guard !calibration.isEmpty else { throw AnvilError.invalidArgument("INT8 needs calibration data (--calib DIR) or a calibration cache (--calibCache FILE)") }
        var fp32 = self
        (fp32.precision, fp32.budget, fp32.timeTactics) = (PrecisionPolicy(), nil, false)
        let engine = try fp32.build(source, name: name).engine
        return try Int8Calibration.measure(engine, samples: calibration, method: calibrationMethod, percentile: calibrationPercentile,
                                           progress: calibrationProgress)
    }

    /// Builds an engine from `source`, which is left as it is.
    public func build(_ source: Model, name: String) throws -> Result {
        // INT8 calibrates once, before anything else (the budget's rounds reuse the ranges).
        if precision.needsInt8, int8Calibration == nil {
            var calibrated = self
            calibrated.int8Calibration = try self.calibrated(source, name: name)
            return try calibrated.build(source, name: name)
        }
        if let budget {
            var (result, choices, measured) = try buildWithinBudget(source, name: name, budget: budget, calibration: calibration)
            (result.precisionChoices, result.measuredBudget) = (choices, measured)
            return result
        }
        let missing = ReferenceExecutor(model: source).unsupportedNodes()
        guard missing.isEmpty else {
            throw AnvilError.invalidModel(file: name, field: "graph", reason: "cannot build: \(missing.count) nodes use unsupported ops: \(missing.joined(separator: ", "))")
        }
        try QuantizationCheck.check(source, file: name)
        try profile.check(against: source.graph.runtimeInputs.map { ($0.name, $0.type) })
        let model = source.copy()
        // --int8 on a model that already quantizes itself calibrates its float layers on top of that.
        let ownQuantization = ["QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"]
        let quantizing = source.graph.nodes.filter { ownQuantization.contains($0.opType) || $0.opType.hasPrefix("DynamicQuantize") }
        if precision.needsInt8, let first = quantizing.first {
            model.warnings.append("the model quantizes itself (\(quantizing.count) nodes such as '\(first.name)' (\(first.opType))): --int8 quantizes its remaining "
                                  + "float convolutions and matrix products on top of that; without --int8 its own quantization runs as given")
        }
        // Fixed shapes become part of the graph, so the optimizer folds what depends on them.
        for (i, input) in model.graph.inputs.enumerated() where profile.isFixed(input.name) {
            guard let e = input.type.elementType else { continue }
            model.graph.inputs[i].type = TensorType(e, shape: profile.opt[input.name]!)
        }
        let context = optimize ? try PipelineRunner(options: pipeline).run(model) : nil
        var int8Layers: [String] = []
        if precision.needsInt8, let int8Calibration {
            int8Layers = try Int8Quantizer(calibration: int8Calibration, policy: precision).apply(model)
        }
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
        try precision.apply(to: graph, host: host)
        // Reduced precision reaches the top-level layers only: weighted layers inside If / Loop /
        // Scan bodies (Silero VAD's whole network) stay FP32, which the user is told.
        if !precision.isFP32, case let nested = Self.nestedWeightedLayers(graph), nested > 0 {
            model.warnings.append("\(nested) convolutions and matrix products inside control-flow bodies (If, Loop, Scan) compute in FP32: "
                                  + "--bf16, --fp16, --int8 and --layerPrecisions apply to top-level layers only")
        }
        // Every value's concrete type for the shapes the engine is compiled for: the profile's
        // optimal ones, else dynamic sizes of 64 (larger where a model needs more, e.g. audio).
        var samples = sampleShapes(model.graph, size: ShapeProfile.sampleSize)
        var types = try? Self.concreteTypes(model, shapes: samples)
        for size in ShapeProfile.largerSampleSizes where types == nil {
            samples = sampleShapes(model.graph, size: size)
            types = try? Self.concreteTypes(model, shapes: samples)
        }
        if types == nil { samples = sampleShapes(model.graph, size: ShapeProfile.sampleSize) }
        // A sample so small that layers see empty tensors (Inception's stride-2 reductions take
        // 64 pixels down to none, wav2vec2's feature encoder 64 samples) decides their kernels
        // for nothing: the first larger one (up to a second of 16 kHz audio) that empties no
        // value is taken, else the one that empties fewest.
        if let found = types, Self.emptyValueCount(found) > 0 {
            var fewest = Self.emptyValueCount(found)
            for size in ShapeProfile.largerSampleSizes where fewest > 0 {
                let larger = sampleShapes(model.graph, size: size)
                if larger != samples, let largerTypes = try? Self.concreteTypes(model, shapes: larger), Self.emptyValueCount(largerTypes) < fewest {
                    (samples, types, fewest) = (larger, largerTypes, Self.emptyValueCount(largerTypes))
                }
            }
        }
        // A graph whose later shapes depend on the data still has its convolutions' shapes known.
        if timeTactics, let known = types ?? (try? Self.concreteTypes(model, shapes: samples, partial: true)),
           let warning = try chooseTactics(graph, types: known) {
            model.warnings.append(warning)
        }
        let meta = """
            {"producer":"anvil","model":"\(name.replacingOccurrences(of: "\"", with: "'"))","layers":\(graph.layers.count)}
            """
        let producer = "anvil \(EngineFile.producerVersion)"
        let staging = try Engine(graph: graph, producer: producer, requiredFeatures: [], profile: profile, name: name)
        var compiled = try staging.compile(shapes: samples, types: types)
        // Without inferable types the runtime runs the graph once on zeros of the sample shapes;
        // a sample too small for the model (Silero VAD's 64 samples leave its LSTM no frame) fails
        // that run and leaves every layer undecided: larger samples are tried.
        if types == nil, compiled.zeroRunFailed {
            for size in ShapeProfile.largerSampleSizes {
                let larger = sampleShapes(model.graph, size: size)
                // Never more than 2^24 input elements (an image model's H and W at 16000 would be billions).
                guard larger != samples, larger.values.reduce(0, { $0 + $1.reduce(1, *) }) <= 1 << 24,
                      let retry = try? staging.compile(shapes: larger, types: nil), !retry.zeroRunFailed else { continue }
                (compiled, samples) = (retry, larger)
                break
            }
        }
        for input in model.graph.runtimeInputs where profile.opt[input.name] == nil {
            guard let dims = input.type.dims, dims.dropFirst().contains(where: { $0.value == nil }), let shape = samples[input.name] else { continue }
            model.warnings.append("input '\(input.name)' has dynamic dimensions \(input.type); kernels were chosen and tactics timed for "
                                  + "\(shape.map(String.init).joined(separator: "x")): give --optShapes (or --shapes) with representative sizes for an engine tuned to them")
        }
        for i in graph.layers.indices { graph.layers[i].decision = compiled.decisions[graph.layers[i].name] }
        // Weights stored prepacked are not stored plain too: a layer that needs them plain unpacks
        // them. Winograd-transformed weights cannot be read back, so theirs stay plain as well.
        // BF16 and FP16 copies are the constant rounded: they stand for it only when layers of
        // that precision alone read it.
        var fp32Readers: Set<String> = []
        for layer in graph.layers where ![.bf16, .fp16].contains(layer.decision?.precision) { fp32Readers.formUnion(layer.inputs) }
        let packedOnly = Set(compiled.packedWeights.filter { $0.isUnpackable && ($0.packedType == .float || !fp32Readers.contains($0.constant)) }.map(\.constant))
        let file = try EngineFormat.file(for: graph, producer: producer, requiredFeatures: compiled.requiredFeatures, metadata: Array(meta.utf8),
                                   profile: profile, weights: compiled.packedWeights, packedOnly: packedOnly, memoryPlan: compiled.memoryPlan)
        var result = Result(file: file, statistics: context, engine: try staging.recording(compiled), compiled: compiled, warnings: model.warnings)
        (result.int8Calibration, result.int8Layers) = (int8Calibration, int8Layers)
        return result
    }

    /// The input shapes an engine is compiled for at build time: the profile's optimal
    /// shapes, else the declared ones with a dynamic batch of 1 and other dynamic sizes of `size`.
    func sampleShapes(_ g: Graph, size: Int) -> [String: [Int]] {
        var shapes = ShapeProfile.samples(g.runtimeInputs.map { ($0.name, $0.type.dims ?? []) }, size: size)
        for (name, opt) in profile.opt { shapes[name] = opt }
        return shapes
    }

    /// Every value's concrete type when the graph's inputs have `shapes`, inferred on a
    /// copy; nil when some type depends on the data (or, `partial`, those that do not).
    static func concreteTypes(_ model: Model, shapes: [String: [Int]], partial: Bool = false) throws -> [String: (DataType, [Int])]? {
        let copy = model.copy()
        for (i, input) in copy.graph.inputs.enumerated() {
            if let shape = shapes[input.name], let e = input.type.elementType { copy.graph.inputs[i].type = TensorType(e, shape: shape) }
        }
        copy.graph.valueTypes = [:]
        var inference = ShapeInference(model: copy)
        try inference.run()
        var types: [String: (DataType, [Int])] = [:]
        for input in copy.graph.runtimeInputs {
            guard let e = input.type.elementType, let shape = input.type.concreteShape else { return nil }
            types[input.name] = (e, shape)
        }
        for (name, t) in copy.graph.valueTypes where copy.graph.initializers[name] == nil {
            guard let e = t.elementType, let shape = t.concreteShape else {
                if partial { continue }
                return nil
            }
            types[name] = (e, shape)
        }
        return types
    }

    /// How many values of these types hold no elements.
    static func emptyValueCount(_ types: [String: (DataType, [Int])]) -> Int {
        types.values.filter { $0.1.contains(0) }.count
    }

    /// Times each convolution's tactics for the compiled shapes and records the choice as its decision.
    /// Returns a warning when other processes kept the machine busy (tactics then timed on one thread).
    func chooseTactics(_ graph: EngineGraph, types: [String: (DataType, [Int])]) throws -> String? {
        let machine = "\(CPUFeatures.host)|\(ProcessInfo.processInfo.activeProcessorCount)cpu"
        var load: Double?
        let chosen = TacticSelector.chooseConvolutionTactics(layers: graph.layers, constants: graph.constants, types: types, engine: try DNNLEngine(),
                                                             cache: timingCache, machine: machine, winograd: winograd, busy: { load = $0 },
                                                             progress: progress)
        for i in graph.layers.indices {
            guard let tactic = chosen[graph.layers[i].name] else { continue }
            graph.layers[i].decision = LayerDecision(kernel: .convolution, algorithm: tactic.algorithm, layout: tactic.layout,
                                                     precision: graph.layers[i].decision?.precision ?? .fp32,
                                                     outputPrecision: graph.layers[i].decision?.outputPrecision, postOps: try PostOps(graph.layers[i]))
        }
        guard let load else { return nil }
        return "other processes were using \(Int((load * 100).rounded()))% of the CPU when tactics were timed: timed on one thread, "
            + "which a busy machine disturbs less; build on a quiet machine for the best choices"
    }

    /// Convolutions and matrix products inside the subgraphs of `graph`'s layers, at any depth.
    static func nestedWeightedLayers(_ graph: EngineGraph) -> Int {
        graph.layers.reduce(0) { total, layer in
            total + layer.attributes.values.reduce(0) { sum, attribute in
                let bodies: [EngineGraph]
                switch attribute {
                case .graph(let g as EngineGraph): bodies = [g]
                case .graphs(let gs): bodies = gs.compactMap { $0 as? EngineGraph }
                default: bodies = []
                }
                return sum + bodies.reduce(0) { n, body in
                    n + body.layers.filter { ["Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"].contains($0.opType) }.count
                        + nestedWeightedLayers(body)
                }
            }
        }
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
                         inputs: node.inputs, outputs: node.outputs, attributes: attributes, fusedFrom: node.fusedFrom)
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
