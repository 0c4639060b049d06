import AnvilCore
import AnvilIR
import AnvilKernels

/// Refuses, before anything is built, QuantizeLinear and DequantizeLinear nodes whose constant
/// parameters can only give wrong numbers (`quantizationProblem`: a scale of 0, NaN or ±∞, a
/// nonzero zero point for int32 input), naming the node. Parameters computed at run time are
/// checked when the node runs.
enum QuantizationCheck {
    static func check(_ model: Model, file: String) throws {
        // Per graph, the values of its Constant nodes (as some exporters write scales), found once.
        var constantNodes: [ObjectIdentifier: [String: Tensor]] = [:]
        try model.graph.forEachNodeRecursively { node, graph in
            guard node.domain.isEmpty, node.opType == "QuantizeLinear" || node.opType == "DequantizeLinear", node.inputs.count >= 2 else { return }
            let nodeConstants = constantNodes[ObjectIdentifier(graph)] ?? {
                var found: [String: Tensor] = [:]
                for n in graph.nodes where n.opType == "Constant" {
                    if let name = n.outputs.first, case .tensor(let t)? = n.attributes["value"] { found[name] = t }
                }
                constantNodes[ObjectIdentifier(graph)] = found
                return found
            }()
            func constant(_ name: String) -> Tensor? { graph.initializers[name] ?? nodeConstants[name] }
            guard let scale = constant(node.inputs[1]) else { return }
            let zeroPoint = node.inputs.count > 2 && !node.inputs[2].isEmpty ? constant(node.inputs[2]) : nil
            let input = node.opType == "DequantizeLinear" ? (graph.initializers[node.inputs[0]]?.dataType ?? graph.type(of: node.inputs[0])?.elementType
                                                              ?? zeroPoint?.dataType) : nil
            if let problem = quantizationProblem(scale: scale, zeroPoint: zeroPoint, input: input) {
                throw AnvilError.invalidModel(file: file, field: "node '\(node.name)' (\(node.opType))", reason: problem)
            }
        }
    }
}
