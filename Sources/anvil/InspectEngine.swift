import AnvilCore
import AnvilEngine
import AnvilKernels
import AnvilRuntime
import Foundation

/// What `anvil inspect` reports about an engine file. The JSON follows TensorRT's
/// engine-inspector layer information ("Layers" with "Name", "LayerType", "Inputs"
/// and "Outputs" carrying "Dimensions" and "Format/Datatype", "TacticName",
/// "Metadata"; "Bindings"), with Anvil's engine facts and memory plan beside it
/// (docs/engine-format.md, "Inspecting an engine").
struct EngineReport: Encodable {
    struct Tensor: Encodable {
        let name: String
        let dimensions: [String]
        let format: String
        enum CodingKeys: String, CodingKey { case name = "Name", dimensions = "Dimensions", format = "Format/Datatype" }
    }
    struct Weights: Encodable {
        let type: String, count: Int, bytes: Int
        enum CodingKeys: String, CodingKey { case type = "Type", count = "Count", bytes = "Bytes" }
    }
    struct LayerInfo: Encodable {
        let name: String
        let layerType: String
        let inputs: [Tensor]
        let outputs: [Tensor]
        /// The builder's decision: kernel, algorithm, layout, post-ops.
        let kernel: String
        /// The kernels planned on this CPU, one per step ("brgconv:avx512_core", "swift", "view").
        let tacticName: String
        /// Why the layer runs on a slow path (the reference kernel); nil when it does not.
        let slowPath: String?
        let precision: String
        let weights: Weights?
        let metadata: String
        let fusedFrom: [String]
        enum CodingKeys: String, CodingKey {
            case name = "Name", layerType = "LayerType", inputs = "Inputs", outputs = "Outputs", kernel = "Kernel", tacticName = "TacticName", slowPath = "SlowPath"
            case precision = "Precision", weights = "Weights", metadata = "Metadata", fusedFrom = "FusedFrom"
        }
    }
    struct Buffer: Encodable {
        let offset: Int, bytes: Int, firstStep: Int, lastStep: Int, values: [String]
        enum CodingKeys: String, CodingKey { case offset = "Offset", bytes = "Bytes", firstStep = "FirstStep", lastStep = "LastStep", values = "Values" }
    }
    /// The WEIGHTS section: prepacked weights, and how many kernels read them in place.
    struct PrepackedWeights: Encodable {
        let entries: Int, bytes: Int
        /// Kernels of the loaded engine that use them in place (nil for an engine being built, which packed its own).
        let kernelsUsingThemInPlace: Int?
        let kernels: Int
        enum CodingKeys: String, CodingKey { case entries = "Entries", bytes = "Bytes", kernelsUsingThemInPlace = "KernelsUsingThemInPlace", kernels = "Kernels" }
    }
    struct MemoryPlan: Encodable {
        let planned: Bool
        /// Whether the engine file carries this plan's offsets (its MEMPLAN section).
        let fromFile: Bool
        let reason: String?
        let arenaBytes: Int
        let scratchpadBytes: Int
        let bytesWithoutReuse: Int
        let buffers: [Buffer]
        enum CodingKeys: String, CodingKey {
            case planned = "Planned", fromFile = "FromFile", reason = "Reason", arenaBytes = "ArenaBytes", scratchpadBytes = "ScratchpadBytes"
            case bytesWithoutReuse = "BytesWithoutReuse", buffers = "Buffers"
        }
    }
    let file: String
    let producer: String
    let requiredCPUFeatures: String
    let bytes: Int
    let inputs: [Tensor]
    let outputs: [Tensor]
    let bindings: [String]
    let profile: [String: [String: [Int]]]
    let layers: [LayerInfo]
    let constantBytes: Int
    let memoryPlan: MemoryPlan
    let prepackedWeights: PrepackedWeights
    enum CodingKeys: String, CodingKey {
        case file = "File", producer = "Producer", requiredCPUFeatures = "RequiredCPUFeatures", bytes = "Bytes", inputs = "Inputs", outputs = "Outputs"
        case bindings = "Bindings", profile = "Profile", layers = "Layers", constantBytes = "ConstantBytes", memoryPlan = "MemoryPlan"
        case prepackedWeights = "PrepackedWeights"
    }

    /// The report of `engine` as `compiled` planned it on this CPU (`Engine.compile`, which
    /// the builder and inspect both call). `storedWeights` are the WEIGHTS the file holds;
    /// `loaded` says whether the engine was read from a file (its kernels then use them in place).
    /// A layer's precision as every report names it: its decision's for floating-point
    /// outputs, else the output's element type (integer and boolean layers compute in their own types).
    static func precision(_ l: Layer, _ decision: LayerDecision?, plan: ExecutionPlan?, types: [String: TensorType]) -> String {
        if let output = l.outputs.first(where: { !$0.isEmpty }), let element = plan?.dataType(of: output) ?? types[output]?.elementType,
           !element.isFloatingPoint { return element.description.uppercased() }
        return (decision?.precision ?? .fp32).description
    }

    init(engine: Engine, compiled: CompiledEngine, file: String, bytes: Int, storedWeights: [PackedWeights], loaded: Bool) {
        self.file = file
        producer = engine.producer
        requiredCPUFeatures = engine.requiredFeatures.description.isEmpty ? "none" : engine.requiredFeatures.description
        self.bytes = bytes
        let plan = compiled.plan, failure = compiled.planFailure
        let types = engine.graph.valueTypes
        func precision(_ l: Layer, _ decision: LayerDecision?) -> String { Self.precision(l, decision, plan: plan, types: types) }
        func tensor(_ name: String, declared: TensorType? = nil) -> Tensor {
            let dims = plan?.shape(of: name).map { $0.map(String.init) } ?? (declared ?? types[name])?.dims?.map(\.description) ?? ["?"]
            let type = (declared ?? types[name])?.elementType
            return Tensor(name: name, dimensions: dims,
                          format: plan?.format(of: name) ?? "Row major linear \(type.map { $0 == .float ? "FP32" : $0.description.uppercased() } ?? "?")")
        }
        inputs = engine.inputs.map { tensor($0.name, declared: $0.type) }
        outputs = engine.outputs.map { tensor($0.name, declared: $0.type) }
        bindings = engine.inputs.map(\.name) + engine.outputs.map(\.name)
        profile = Dictionary(uniqueKeysWithValues: engine.profile.names.map {
            ($0, ["min": engine.profile.min[$0]!, "opt": engine.profile.opt[$0]!, "max": engine.profile.max[$0]!])
        })
        // Types and shapes only: the report does not read the weights themselves.
        let store = engine.graph.constants
        var constants: [String: (dataType: DataType, count: Int)] = [:]
        for name in store.names { if let (t, shape) = store.type(of: name) { constants[name] = (t, shape.reduce(1, *)) } }
        // A BF16 or FP16 layer's weights (its second input) are stored in that type when no
        // other layer reads them (the bias stays FP32): the bytes count as stored.
        var readers: [String: Set<Precision>] = [:]
        for l in engine.graph.layers {
            let p = (compiled.decisions[l.name] ?? l.decision)?.precision ?? .fp32
            for (i, name) in l.inputs.enumerated() where constants[name] != nil { readers[name, default: []].insert(i == 1 && [.bf16, .fp16].contains(p) ? p : .fp32) }
        }
        func storedType(_ name: String) -> DataType {
            guard let c = constants[name], c.dataType == .float, let r = readers[name], r.count == 1 else { return constants[name]?.dataType ?? .float }
            return r.first == .bf16 ? .bfloat16 : r.first == .fp16 ? .float16 : .float
        }
        func storedBytes(_ name: String) -> Int { (constants[name]?.count ?? 0) * max(storedType(name).byteSize, 1) }
        layers = engine.graph.layers.map { l in
            let weightNames = l.inputs.filter { constants[$0] != nil }
            let weights = weightNames.compactMap { constants[$0] }
            let weightBytes = weightNames.reduce(0) { $0 + storedBytes($1) }
            let decision = compiled.decisions[l.name] ?? l.decision
            return LayerInfo(name: l.name, layerType: l.domain.isEmpty ? l.opType : "\(l.domain).\(l.opType)",
                             inputs: l.inputs.filter { !$0.isEmpty && constants[$0] == nil }.map { tensor($0) },
                             outputs: l.outputs.filter { !$0.isEmpty }.map { tensor($0) },
                             kernel: decision?.description ?? "undecided", tacticName: compiled.implementations[l.name] ?? "reference",
                             slowPath: decision.map { $0.isSlowPath ? $0.slowPathReason ?? "reference kernel" : nil } ?? "undecided",
                             precision: precision(l, decision),
                             weights: weights.isEmpty ? nil : Weights(type: storedType(l.inputs.count > 1 && constants[l.inputs[1]] != nil ? l.inputs[1] : weightNames[0]).description,
                                                                                     count: weights.reduce(0) { $0 + $1.count }, bytes: weightBytes),
                             metadata: l.fusedFrom.joined(separator: " + "), fusedFrom: l.fusedFrom)
        }
        constantBytes = constants.keys.reduce(0) { $0 + storedBytes($1) }
        let usage = engine.weightsInPlace
        prepackedWeights = PrepackedWeights(entries: storedWeights.count, bytes: storedWeights.reduce(0) { $0 + $1.data.count },
                                            kernelsUsingThemInPlace: loaded ? usage.inPlace : nil, kernels: usage.kernels)
        memoryPlan = MemoryPlan(planned: plan != nil, fromFile: plan != nil && engine.memoryPlan != nil && engine.memoryPlan == plan?.storedMemoryPlan,
                                reason: failure, arenaBytes: plan?.arenaBytes ?? 0, scratchpadBytes: plan?.scratchpadBytes ?? 0,
                                bytesWithoutReuse: plan?.unplannedBytes ?? 0,
                                buffers: (plan?.memoryPlan ?? []).map { Buffer(offset: $0.offset, bytes: $0.bytes, firstStep: $0.firstStep,
                                                                              lastStep: $0.lastStep == Int.max ? -1 : $0.lastStep, values: $0.values) })
    }

    var text: String {
        func shape(_ t: Tensor) -> String { "[\(t.dimensions.joined(separator: ","))]" }
        var s = "Engine: \(file) (\(ModelReport.bytes(bytes)))\n"
        s += "  producer: \(producer), requires CPU features: \(requiredCPUFeatures)\n"
        s += "Inputs:\n" + inputs.map { "  \($0.name): \(shape($0)) \($0.format)\n" }.joined()
        for (name, p) in profile.sorted(by: { $0.key < $1.key }) {
            s += "  profile \(name): min \(p["min"]!), opt \(p["opt"]!), max \(p["max"]!)\n"
        }
        s += "Outputs:\n" + outputs.map { "  \($0.name): \(shape($0)) \($0.format)\n" }.joined()
        let slow = layers.filter { $0.slowPath != nil }.count
        s += "Layers: \(layers.count) (\(layers.filter { $0.fusedFrom.count > 1 }.count) fused, \(slow) on slow paths), weights \(ModelReport.bytes(constantBytes))\n"
        for l in layers {
            s += "  \(l.name): \(l.layerType) [\(l.kernel): \(l.tacticName)] \(l.precision)"
            if let w = l.weights { s += ", weights \(ModelReport.bytes(w.bytes))" }
            s += "\n      " + l.inputs.map { shape($0) }.joined(separator: ", ") + " -> " + l.outputs.map { "\(shape($0)) \($0.format)" }.joined(separator: ", ")
            if l.fusedFrom.count > 1 || l.fusedFrom != [l.name] { s += "\n      fused from: \(l.fusedFrom.joined(separator: " + "))" }
            if let why = l.slowPath { s += "\n      SLOW PATH: \(why)" }
            s += "\n"
        }
        let w = prepackedWeights
        s += "Prepacked weights: \(w.entries) (\(ModelReport.bytes(w.bytes)))"
            + (w.kernelsUsingThemInPlace.map { ", used in place by \($0) of \(w.kernels) weighted kernels" } ?? "") + "\n"
        let m = memoryPlan
        if m.planned {
            s += "Memory plan\(m.fromFile ? " (from the file)" : ""): arena \(ModelReport.bytes(m.arenaBytes)) for \(ModelReport.bytes(m.bytesWithoutReuse)) of activations "
                + "(\(m.buffers.count) buffers reused by liveness), scratchpad \(ModelReport.bytes(m.scratchpadBytes))\n"
            for b in m.buffers.sorted(by: { $0.bytes > $1.bytes }).prefix(12) {
                s += "  offset \(b.offset): \(ModelReport.bytes(b.bytes)), steps \(b.firstStep)...\(b.lastStep < 0 ? "end" : String(b.lastStep)): \(b.values.prefix(3).joined(separator: ", "))"
                    + (b.values.count > 3 ? " …" : "") + "\n"
            }
            if m.buffers.count > 12 { s += "  … \(m.buffers.count - 12) smaller buffers (--format json lists all)\n" }
        } else {
            s += "Memory plan: none, the engine runs on the layer interpreter (\(m.reason ?? "unknown reason"))\n"
        }
        return s
    }
}
