import AnvilCore
import AnvilEngine
import AnvilRuntime
import Foundation

/// What `anvil inspect` reports about an engine file.
struct EngineReport: Encodable {
    struct Value: Encodable { let name: String; let type: String; let shape: [String] }
    struct LayerInfo: Encodable {
        let name: String
        let type: String
        let tactic: String
        let inputs: [String]
        let outputs: [String]
        let fusedFrom: [String]
        let weightBytes: Int
    }
    let file: String
    let producer: String
    let requiredCPUFeatures: String
    let bytes: Int
    let inputs: [Value]
    let outputs: [Value]
    let layers: [LayerInfo]
    let constantBytes: Int

    init(engine: Engine, file: String, bytes: Int) {
        self.file = file
        producer = engine.producer
        requiredCPUFeatures = engine.requiredFeatures.description.isEmpty ? "none" : engine.requiredFeatures.description
        self.bytes = bytes
        func value(_ v: (name: String, type: TensorType)) -> Value {
            Value(name: v.name, type: v.type.elementType?.description ?? "?", shape: v.type.dims?.map(\.description) ?? ["*"])
        }
        inputs = engine.inputs.map(value)
        outputs = engine.outputs.map(value)
        let constants = Dictionary(engine.graph.constants.map { ($0.name, $0.value.count * max($0.value.dataType.byteSize, 1)) }, uniquingKeysWith: { a, _ in a })
        layers = engine.graph.layers.map { l in
            LayerInfo(name: l.name, type: l.domain.isEmpty ? l.opType : "\(l.domain).\(l.opType)", tactic: l.tactic,
                      inputs: l.inputs, outputs: l.outputs, fusedFrom: l.fusedFrom,
                      weightBytes: l.inputs.compactMap { constants[$0] }.reduce(0, +))
        }
        constantBytes = constants.values.reduce(0, +)
    }

    var text: String {
        var s = "Engine: \(file) (\(ModelReport.bytes(bytes)))\n"
        s += "  producer: \(producer), requires CPU features: \(requiredCPUFeatures)\n"
        s += "Inputs:\n" + inputs.map { "  \($0.name): \($0.type)[\($0.shape.joined(separator: ","))]\n" }.joined()
        s += "Outputs:\n" + outputs.map { "  \($0.name): \($0.type)[\($0.shape.joined(separator: ","))]\n" }.joined()
        s += "Layers: \(layers.count) (\(layers.filter { $0.fusedFrom.count > 1 }.count) fused), weights \(ModelReport.bytes(constantBytes))\n"
        for l in layers {
            s += "  \(l.name): \(l.type) [\(l.tactic)]"
            if l.weightBytes > 0 { s += ", weights \(ModelReport.bytes(l.weightBytes))" }
            if l.fusedFrom.count > 1 || l.fusedFrom != [l.name] { s += "\n      fused from: \(l.fusedFrom.joined(separator: " + "))" }
            s += "\n"
        }
        return s
    }
}
