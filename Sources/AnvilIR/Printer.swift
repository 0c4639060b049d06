import AnvilCore

/// Renders a graph as readable text, one node per line:
/// `%y: float[1,64,56,56] = Conv[group=1, strides=[2,2]](%x, %w)   # conv1`.
public enum Printer {
    public static func print(_ graph: Graph, indent: String = "") -> String {
        var out = ""
        let ins = graph.runtimeInputs.map { "%\($0.name): \($0.type)" }.joined(separator: ", ")
        let outs = graph.outputs.map { "%\($0.name): \($0.type)" }.joined(separator: ", ")
        out += "\(indent)graph \(graph.name)(\(ins)) -> (\(outs)) {\n"
        for name in graph.initializerOrder {
            if let t = graph.initializers[name] { out += "\(indent)  const %\(name): \(t.type)\n" }
        }
        for node in graph.nodes {
            let results = node.outputs.map { o -> String in
                if o.isEmpty { return "_" }
                if let t = graph.valueTypes[o] { return "%\(o): \(t)" }
                return "%\(o)"
            }.joined(separator: ", ")
            let attrs = node.attributes.keys.sorted().compactMap { key -> String? in
                if case .graph = node.attributes[key]! { return nil }
                if case .graphs = node.attributes[key]! { return nil }
                return "\(key)=\(node.attributes[key]!)"
            }
            let attrText = attrs.isEmpty ? "" : "[\(attrs.joined(separator: ", "))]"
            let args = node.inputs.map { $0.isEmpty ? "_" : "%\($0)" }.joined(separator: ", ")
            let origin = node.fusedFrom.joined(separator: " + ")
            out += "\(indent)  \(results) = \(node.qualifiedOpType)\(attrText)(\(args))   # \(origin)\n"
            for key in node.attributes.keys.sorted() {
                for sub in subgraphs(node.attributes[key]!) {
                    out += "\(indent)    \(key):\n" + print(sub, indent: indent + "    ")
                }
            }
        }
        out += "\(indent)}\n"
        return out
    }

    private static func subgraphs(_ a: Attribute) -> [Graph] {
        switch a {
        case .graph(let g): [g as? Graph].compactMap { $0 }
        case .graphs(let gs): gs.compactMap { $0 as? Graph }
        default: []
        }
    }
}
