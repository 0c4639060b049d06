import AnvilCore
import AnvilIR

/// Replaces an If whose condition is a constant by the nodes of the branch it takes.
///
/// Exporters trace Python `if`s on shapes into If nodes (`if x.shape[0] == 1`, Silero
/// VAD's checks of its state's batch): with the shapes fixed, constant folding turns
/// such a condition into a constant, and the branch becomes part of the graph, where
/// every other pass and the planner can take it. Branch values and nodes get names
/// unused in the graph; Identity nodes give the If's outputs the branch's results
/// (eliminate-no-ops removes them).
public struct InlineConstantIf: Pass {
    public let name = "inline-constant-if"
    public let summary = "replace an If with a constant condition by the branch it takes"
    public init() {}

    public func run(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        guard graph.nodes.contains(where: { $0.opType == "If" && $0.domain.isEmpty }) else { return false }
        var usedValues = Set(graph.inputs.map(\.name)).union(graph.initializers.keys)
        var usedNodes = Set<String>()
        for node in graph.nodes {
            usedValues.formUnion(node.outputs)
            usedNodes.insert(node.name)
        }
        func fresh(_ base: String, in used: inout Set<String>) -> String {
            var candidate = base, k = 1
            while used.contains(candidate) {
                candidate = "\(base)_\(k)"
                k += 1
            }
            used.insert(candidate)
            return candidate
        }
        var result: [Node] = []
        var changed = false
        for node in graph.nodes {
            guard node.opType == "If", node.domain.isEmpty, let condName = node.inputs.first,
                  let cond = graph.initializers[condName], cond.dataType == .bool, cond.count == 1,
                  case .graph(let s)? = node.attributes[cond.bools[0] ? "then_branch" : "else_branch"], let taken = s as? Graph,
                  taken.inputs.isEmpty, taken.outputs.count >= node.outputs.count else {
                result.append(node)
                continue
            }
            let branch = taken.copy()
            // The branch's values, renamed where the graph already uses the name.
            var renamed: [String: String] = [:]
            for name in branch.initializerOrder {
                let new = fresh(name, in: &usedValues)
                renamed[name] = new
                if let t = branch.initializers[name] { graph.setInitializer(new, t) }
            }
            for n in branch.nodes {
                for o in n.outputs where !o.isEmpty { renamed[o] = fresh(o, in: &usedValues) }
            }
            for n in branch.nodes {
                n.name = fresh(n.name, in: &usedNodes)
                n.inputs = n.inputs.map { renamed[$0] ?? $0 }
                n.outputs = n.outputs.map { renamed[$0] ?? $0 }
                for sub in n.subgraphs {
                    for (old, new) in renamed where old != new { sub.replaceOuterReferences(of: old, with: new) }
                }
                result.append(n)
            }
            for (out, branchOut) in zip(node.outputs, branch.outputs) where !out.isEmpty {
                result.append(Node(name: fresh("\(node.name)/output", in: &usedNodes), opType: "Identity",
                                   inputs: [renamed[branchOut.name] ?? branchOut.name], outputs: [out]))
            }
            context.count("branches inlined")
            changed = true
        }
        if changed { graph.nodes = result }
        return changed
    }
}
