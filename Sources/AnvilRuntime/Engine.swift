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
    /// Tactic decisions, made once and shared by all contexts.
    let tactics = TacticChoices()

    /// Reads an engine file (memory-mapped) and validates it.
    public convenience init(path: String) throws {
        try self.init(file: EngineFile.load(path: path), name: path)
    }

    public init(file: EngineFile, name: String) throws {
        guard let section = file.section("GRAPH") else {
            throw AnvilError.invalidModel(file: name, field: "engine", reason: "has no GRAPH section")
        }
        graph = try EngineCodec.decode(section, file: name)
        producer = file.producer
        requiredFeatures = file.requiredFeatures
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

    /// Serializes an engine graph into an engine file.
    public static func file(for graph: EngineGraph, producer: String, requiredFeatures: CPUFeatures, metadata: [UInt8]) throws -> EngineFile {
        EngineFile(producer: producer, requiredFeatures: requiredFeatures,
                   sections: [("META", metadata), ("GRAPH", try EngineCodec.encode(graph))])
    }

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

    /// The engine's runtime inputs and outputs.
    public var inputs: [(name: String, type: TensorType)] { graph.inputs }
    public var outputs: [(name: String, type: TensorType)] { graph.outputs }
}

/// Per-thread execution state of an engine. Create one per thread.
public final class ExecutionContext {
    public let engine: Engine
    /// This context's oneDNN stream, created on first use.
    private var stream: DNNLStream?
    /// Fast kernels by layer (top-level graph), prepared for the last input shapes seen.
    private var fastLayers: [String: FastLayer] = [:]
    /// When true, each run records every top-level layer's time.
    public var profiling = false
    /// Per-layer times (milliseconds) of the runs made while profiling, in layer order.
    public private(set) var profile: [(layer: String, tactic: String, milliseconds: [Double])] = []

    public init(engine: Engine) { self.engine = engine }

    /// Runs the engine on named inputs; returns the outputs in declaration order.
    public func run(_ inputs: [String: Tensor]) throws -> [(name: String, value: Tensor)] {
        let g = engine.graph
        try InputCheck.check(inputs, declared: g.inputs, allNames: Set(g.inputs.map(\.name)))
        var env: [String: Tensor] = [:]
        for c in g.constants { env[c.name] = c.value }
        for (k, v) in inputs { env[k] = v }
        return zip(g.outputs.map(\.name), try execute(g, env: env)).map { ($0, $1) }
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
        guard let created = try FastLayer.make(context, engine: engine.dnnl, tactics: engine.tactics) else { return nil }
        fastLayers[layer.name] = created
        return created
    }

    func execute(_ g: EngineGraph, env initial: [String: Tensor]) throws -> [Tensor] {
        var env = initial
        for layer in g.layers {
            guard let def = KernelRegistry.lookup(domain: layer.domain, opType: layer.opType, opset: layer.opset) else {
                throw AnvilError.unsupportedOp(node: layer.name, op: layer.opType, domain: layer.domain, version: layer.opset)
            }
            let args: [Tensor?] = try layer.inputs.map { name in
                if name.isEmpty { return nil }
                guard let v = env[name] else {
                    throw AnvilError.invalidNode(node: layer.name, op: layer.opType, reason: "input '\(name)' has no value")
                }
                return v
            }
            let scope = env
            let context = EvalContext(name: layer.name, opType: layer.opType, domain: layer.domain, outputCount: layer.outputs.count,
                                      attributes: layer.attributes, opset: layer.opset, inputs: args) { body, values in
                guard let sub = body as? EngineGraph, values.count == sub.inputs.count else {
                    throw AnvilError.invalidNode(node: layer.name, op: layer.opType, reason: "subgraph '\(body.name)' does not fit its inputs")
                }
                var subEnv = scope
                for c in sub.constants { subEnv[c.name] = c.value }
                for (input, value) in zip(sub.inputs, values) { subEnv[input.name] = value }
                return try self.execute(sub, env: subEnv)
            }
            let results: [Tensor]
            let started = profiling && g === engine.graph ? DispatchTime.now().uptimeNanoseconds : 0
            defer {
                if started > 0 {
                    let ms = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
                    let tactic = layer.tactic == "onednn" ? (fastLayers[layer.name]?.implementation ?? "reference") : "reference"
                    if let i = profile.firstIndex(where: { $0.layer == layer.name }) { profile[i].milliseconds.append(ms) }
                    else { profile.append((layer.name, "\(layer.opType): \(tactic)", [ms])) }
                }
            }
            do {
                if layer.tactic == "onednn", g === engine.graph, let fast = try fastLayer(layer, context) {
                    results = [try fast.run(context, stream: try currentStream())]
                } else {
                    results = try def.evaluate(context)
                }
            } catch AnvilError.invalidTensor(let name, let reason) {
                throw AnvilError.invalidNode(node: layer.name, op: layer.opType, reason: name.isEmpty || name == layer.opType ? reason : "\(name): \(reason)")
            }
            for (name, value) in zip(layer.outputs, results) where !name.isEmpty { env[name] = value }
        }
        return try g.outputs.map { out in
            guard let v = env[out.name] else { throw AnvilError.invalidGraph(graph: g.name, reason: "output '\(out.name)' was not produced") }
            return v
        }
    }
}
