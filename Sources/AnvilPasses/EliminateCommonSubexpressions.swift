import AnvilCore
import AnvilIR

/// Merges nodes that compute the same op on the same inputs with the same
/// attributes: the later one's outputs are replaced by the earlier one's.
public struct EliminateCommonSubexpressions: Pass {
    public let name = "eliminate-common-subexpressions"
    public let summary = "merge nodes computing the same op on the same inputs"
    public init() {}

    /// Ops whose results are not a function of their inputs alone.
    static let impure: Set<String> = ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"]

    public func run(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        var seen: [String: Node] = [:]
        var changed = false
        var kept: [Node] = []
        let outputs = Set(graph.outputs.map(\.name))
        for node in graph.nodes {
            guard node.subgraphs.isEmpty, !Self.impure.contains(node.opType), let key = Self.key(node) else {
                kept.append(node)
                continue
            }
            if let earlier = seen[key], node.outputs.allSatisfy({ !outputs.contains($0) }) {
                for (mine, theirs) in zip(node.outputs, earlier.outputs) where !mine.isEmpty {
                    graph.replaceUses(of: mine, with: theirs)
                }
                context.count("nodes merged")
                changed = true
                continue
            }
            seen[key] = seen[key] ?? node
            kept.append(node)
        }
        graph.nodes = kept
        return changed
    }

    /// A key equal for nodes that compute the same thing; nil for nodes with large tensor attributes.
    static func key(_ node: Node) -> String? {
        var parts = [node.domain, node.opType, node.inputs.joined(separator: ","), String(node.outputs.count)]
        for name in node.attributes.keys.sorted() {
            let value = node.attributes[name]!
            switch value {
            case .tensor(let t):
                guard t.count <= 4096 else { return nil }
                parts.append("\(name)=\(t.dataType)\(t.shape)\(t.strings)")
            case .tensors: return nil
            default: parts.append("\(name)=\(value)")
            }
        }
        return parts.joined(separator: "|")
    }
}
