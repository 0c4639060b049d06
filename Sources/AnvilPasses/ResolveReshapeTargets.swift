import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// A Reshape whose target is computed at run time (Shape → Gather → Concat, as
/// exporters write it for dynamic axes) gets a constant target where its output type
/// is known symbolically: known sizes as they are, a dimension equal to the input's at
/// the same position as 0 (ONNX's "copy"), one remaining dimension as -1. The shape
/// computation then goes dead, and the patterns that expect constant targets
/// (attention, layer fusions) match dynamic exports as they match static ones.
public struct ResolveReshapeTargets: Pass {
    public let name = "resolve-reshape-targets"
    public let summary = "give Reshapes with computed targets a constant target from their symbolic output shape"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule]).run(context) }

    static let rule = RewriteRule("computed reshape target", roots: ["Reshape"]) { node, ctx in
        guard node.domain.isEmpty, node.inputs.count >= 2, !node.inputs[1].isEmpty, ctx.constant(node.inputs[1]) == nil,
              let input = ctx.type(node.inputs[0]).dims, let output = ctx.type(node.outputs[0]).dims, !output.isEmpty else { return nil }
        let allowZero = ((try? AttributeReader(node: node).int("allowzero", 0)) ?? 0) != 0
        var target: [Int64] = []
        var inferred = 0
        for (i, d) in output.enumerated() {
            switch d {
            case .known(let k):
                // Without allowzero a 0 would mean "copy the input's dimension".
                guard k != 0 || allowZero else { return nil }
                target.append(Int64(k))
            case .symbol where !allowZero && i < input.count && input[i] == d:
                target.append(0)
            default:
                target.append(-1)
                inferred += 1
            }
        }
        guard inferred <= 1 else { return nil }
        let name = ctx.graph.freshName("\(node.name)_target")
        let reshape = Node(name: node.name, opType: "Reshape", inputs: [node.inputs[0], name], outputs: node.outputs,
                           attributes: node.attributes, fusedFrom: node.fusedFrom)
        return Patch(statistic: "Reshape target made constant", remove: [node], add: [reshape],
                     initializers: [(name, try Tensor(int64s: target, shape: [target.count]))])
    }
}
