import AnvilCore
import AnvilRuntime
import AnvilIR
import AnvilONNX
import AnvilOps
import ArgumentParser
import Foundation

/// What `anvil inspect` reports about an ONNX model.
struct ModelReport: Encodable {
    struct Value: Encodable { let name: String; let type: String; let shape: [String] }
    struct OpCount: Encodable { let op: String; let count: Int }
    struct Unsupported: Encodable { let node: String; let op: String; let domain: String; let opset: Int }
    let file: String
    let irVersion: Int
    let producer: String
    let opsets: [String: Int]
    let inputs: [Value]
    let outputs: [Value]
    let nodeCount: Int
    let ops: [OpCount]
    let parameterCount: Int
    let parameterBytes: Int
    let unsupported: [Unsupported]
    /// Why shape inference failed, if it did.
    let inferenceError: String?

    init(model: Model, file: String) {
        self.file = file
        irVersion = model.irVersion
        producer = [model.producerName, model.producerVersion].filter { !$0.isEmpty }.joined(separator: " ")
        opsets = Dictionary(model.opsets.map { ($0.domain.isEmpty ? "ai.onnx" : $0.domain, $0.version) }, uniquingKeysWith: { a, _ in a })
        func value(_ v: ValueInfo) -> Value {
            Value(name: v.name, type: v.type.elementType?.description ?? "?", shape: v.type.dims?.map(\.description) ?? ["*"])
        }
        inputs = model.graph.runtimeInputs.map(value)
        // Outputs show what inference adds to their declarations.
        var inference = ShapeInference(model: model)
        var inferred: [String: ValueFacts] = [:]
        do {
            inferred = try inference.run()
            inferenceError = nil
        } catch {
            inferenceError = "\(error)"
        }
        outputs = model.graph.outputs.map { o in
            let t = inferred[o.name].flatMap { merge($0.type, o.type) } ?? o.type
            return value(ValueInfo(name: o.name, type: t))
        }
        var histogram: [String: Int] = [:]
        var count = 0
        var missing: [Unsupported] = []
        model.graph.forEachNodeRecursively { node, _ in
            histogram[node.qualifiedOpType, default: 0] += 1
            count += 1
            let opset = model.opsetVersion(domain: node.domain) ?? 0
            if OpRegistry.lookup(domain: node.domain, opType: node.opType, opset: opset) == nil {
                missing.append(Unsupported(node: node.name, op: node.opType, domain: node.domain.isEmpty ? "ai.onnx" : node.domain, opset: opset))
            }
        }
        nodeCount = count
        ops = histogram.map { OpCount(op: $0.key, count: $0.value) }.sorted { $0.count != $1.count ? $0.count > $1.count : $0.op < $1.op }
        parameterCount = model.graph.initializers.values.reduce(0) { $0 + $1.count }
        parameterBytes = model.graph.initializers.values.reduce(0) { $0 + $1.count * max($1.dataType.byteSize, 1) }
        unsupported = missing
    }

    var text: String {
        var s = "Model: \(file)\n"
        s += "  producer: \(producer.isEmpty ? "(unknown)" : producer), IR version \(irVersion)\n"
        s += "  opsets: \(opsets.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))\n"
        s += "Inputs:\n" + inputs.map { "  \($0.name): \($0.type)[\($0.shape.joined(separator: ","))]\n" }.joined()
        s += "Outputs:\n" + outputs.map { "  \($0.name): \($0.type)[\($0.shape.joined(separator: ","))]\n" }.joined()
        s += "Nodes: \(nodeCount)\n" + ops.map { "  \($0.op.padding(toLength: 28, withPad: " ", startingAt: 0)) \($0.count)\n" }.joined()
        s += "Parameters: \(parameterCount) (\(Self.bytes(parameterBytes)))\n"
        if let inferenceError { s += "Shape inference failed: \(inferenceError)\n" }
        if unsupported.isEmpty {
            s += "Unsupported ops: none\n"
        } else {
            s += "Unsupported ops (\(unsupported.count) nodes):\n"
            s += unsupported.map { "  \($0.node): \($0.domain == "ai.onnx" ? "" : $0.domain + ".")\($0.op) (opset \($0.opset))\n" }.joined()
        }
        return s
    }

    static func bytes(_ n: Int) -> String {
        n >= 1 << 20 ? String(format: "%.1f MiB", Double(n) / 1048576) : (n >= 1024 ? String(format: "%.1f KiB", Double(n) / 1024) : "\(n) B")
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe an ONNX model (inputs, outputs, ops, parameters, unsupported ops) or an engine (layers, tactics, fused-from names, weights).")

    @Argument(help: "The ONNX model or engine file.") var model: String
    @Option(help: "Output format: text or json.") var format: OutputFormat = .text

    enum OutputFormat: String, ExpressibleByArgument { case text, json }

    /// Prints a report in the requested format.
    func show<Report: Encodable>(text: String, json report: Report) throws {
        switch format {
        case .text: print(text, terminator: "")
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        }
    }

    @OptionGroup var limits: LimitOptions

    func run() throws {
        try Anvil.guarded(limits) {
            if isEngineFile(model) {
                let engine = try Engine(path: model)
                let size = (try? FileManager.default.attributesOfItem(atPath: model)[.size] as? Int) ?? 0
                // Planning on this CPU is what the reports describe; a model that cannot be planned is reported, not fatal.
                let report = EngineReport(engine: engine, compiled: try engine.compile(), file: model, bytes: size,
                                          storedWeights: engine.graph.constants.packed, loaded: true)
                try show(text: report.text, json: report)
                return
            }
            let report = ModelReport(model: try ONNXImporter.load(path: model), file: model)
            try show(text: report.text, json: report)
        }
    }
}
