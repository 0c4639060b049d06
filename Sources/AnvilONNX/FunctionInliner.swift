import AnvilCore
import AnvilIR

/// A model-local function (ModelProto.functions), as PyTorch's newer exporter writes them.
struct LocalFunction {
    let name: String
    let domain: String
    let inputs: [String]
    let outputs: [String]
    let nodes: [Node]
    let attributeDefaults: [String: Attribute]
    /// Per function node: attribute name → name of the function attribute it refers to.
    let refAttributes: [[String: String]]
    /// The function's doc string (Anvil marks the bodies of its own ops there).
    var docString: String = ""
}

/// Replaces calls of model-local functions by the function bodies, so the rest of
/// Anvil sees only primitive ops. Values inside a body get the calling node's
/// name as prefix, which keeps them unique and traceable.
struct FunctionInliner {
    let functions: [String: LocalFunction]
    let file: String
    static let maxDepth = 32

    init(functions: [LocalFunction], file: String) {
        self.functions = Dictionary(functions.map { ("\($0.domain)::\($0.name)", $0) }, uniquingKeysWith: { a, _ in a })
        self.file = file
    }

    func inline(_ graph: Graph, depth: Int = 0) throws -> Graph {
        var result: [Node] = []
        var changed = false
        for node in graph.nodes {
            for (key, value) in node.attributes {
                switch value {
                case .graph(let g): node.attributes[key] = .graph(try inline(ONNXExporter.irGraph(g), depth: depth))
                case .graphs(let gs): node.attributes[key] = .graphs(try gs.map { try inline(ONNXExporter.irGraph($0), depth: depth) })
                default: break
                }
            }
            guard let f = functions["\(node.domain)::\(node.opType)"] else {
                result.append(node)
                continue
            }
            // A body Anvil exported for one of its own ops: call the op itself again.
            if f.domain == anvilDomain, f.docString.hasPrefix(FunctionExport.marker) {
                node.opType = String(f.docString.dropFirst(FunctionExport.marker.count))
                result.append(node)
                continue
            }
            changed = true
            result.append(contentsOf: try expand(node, f))
        }
        graph.nodes = result
        if changed {
            guard depth < Self.maxDepth else {
                throw AnvilError.invalidModel(file: file, field: "ModelProto.functions", reason: "functions call each other more than \(Self.maxDepth) deep (recursion?)")
            }
            return try inline(graph, depth: depth + 1)
        }
        return graph
    }

    func expand(_ call: Node, _ f: LocalFunction) throws -> [Node] {
        var rename: [String: String] = ["": ""]
        for (i, name) in f.inputs.enumerated() { rename[name] = i < call.inputs.count ? call.inputs[i] : "" }
        for (i, name) in f.outputs.enumerated() { rename[name] = i < call.outputs.count ? call.outputs[i] : "" }
        func mapped(_ v: String) -> String {
            if let r = rename[v] { return r }
            return "\(call.name)/\(v)"
        }
        return f.nodes.enumerated().map { index, template in
            var attributes = template.attributes
            for (attr, ref) in f.refAttributes[index] {
                if let v = call.attributes[ref] ?? f.attributeDefaults[ref] { attributes[attr] = v } else { attributes[attr] = nil }
            }
            let name = "\(call.name)/\(template.name.isEmpty ? "\(template.opType)_\(index)" : template.name)"
            return Node(name: name, opType: template.opType, domain: template.domain,
                        inputs: template.inputs.map(mapped), outputs: template.outputs.map(mapped), attributes: attributes)
        }
    }
}
