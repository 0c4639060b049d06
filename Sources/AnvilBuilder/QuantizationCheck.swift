import AnvilCore
import AnvilIR
import AnvilKernels

/// Refuses, before anything is built, QuantizeLinear and DequantizeLinear nodes whose constant
/// parameters can only give wrong numbers (`quantizationProblem`: a scale of 0, NaN or ±∞, a
/// nonzero zero point for int32 input), naming the node. Parameters computed at run time are
/// checked when the node runs.
enum QuantizationCheck {
    static func check(_ model: Model, file: String) throws {
        try model.graph.forEachNodeRecursively { node, graph in
            guard node.domain.isEmpty, node.opType == "QuantizeLinear" || node.opType == "DequantizeLinear", node.inputs.count >= 2 else { return }
            // Initializers, or Constant nodes (as some exporters write scales).
            func constant(_ name: String) -> Tensor? {
                if let t = graph.initializers[name] { return t }
                for n in graph.nodes where n.opType == "Constant" && n.outputs.first == name {
                    if case .tensor(let t)? = n.attributes["value"] { return t }
                }
                return nil
            }
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
