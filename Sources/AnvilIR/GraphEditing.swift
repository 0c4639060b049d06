import AnvilCore

/// Who produces and who reads each value of a graph. Reads from subgraphs (outer
/// scope references) count as reads by the node that owns the subgraph.
public struct UseIndex {
    /// Node producing each value.
    public private(set) var producer: [String: Node] = [:]
    /// Nodes reading each value (a node appears once per input slot).
    public private(set) var consumers: [String: [Node]] = [:]
    /// Names of the graph's outputs.
    public let graphOutputs: Set<String>
    /// Names of the graph's inputs (including initializers listed as inputs).
    public let graphInputs: Set<String>

    public init(_ graph: Graph) {
        graphOutputs = Set(graph.outputs.map(\.name))
        graphInputs = Set(graph.inputs.map(\.name))
        for node in graph.nodes {
            for o in node.outputs where !o.isEmpty { producer[o] = node }
            for i in node.inputs where !i.isEmpty { consumers[i, default: []].append(node) }
            for name in Set(node.subgraphs.flatMap { UseIndex.outerReferences($0) }) { consumers[name, default: []].append(node) }
        }
    }

    /// Number of reads of a value, graph outputs included.
    public func useCount(_ value: String) -> Int {
        (consumers[value]?.count ?? 0) + (graphOutputs.contains(value) ? 1 : 0)
    }

    /// The only consumer of a value that is not a graph output, nil otherwise.
    public func soleConsumer(_ value: String) -> Node? {
        guard !graphOutputs.contains(value), let c = consumers[value], c.count == 1 else { return nil }
        return c[0]
    }

    /// Names a subgraph reads from enclosing scopes.
    public static func outerReferences(_ graph: Graph) -> Set<String> {
        var defined = Set(graph.inputs.map(\.name)).union(graph.initializers.keys)
        var free = Set<String>()
        for node in graph.nodes {
            for input in node.inputs where !input.isEmpty && !defined.contains(input) { free.insert(input) }
            for sub in node.subgraphs { free.formUnion(outerReferences(sub).subtracting(defined)) }
            defined.formUnion(node.outputs)
        }
        for out in graph.outputs where !defined.contains(out.name) { free.insert(out.name) }
        return free
    }
}

extension Graph {
    /// Replaces every read of `old` by `new`: node inputs here and in subgraphs
    /// (unless a subgraph shadows the name). Graph outputs are not renamed.
    public func replaceUses(of old: String, with new: String) {
        for node in nodes {
            for (i, input) in node.inputs.enumerated() where input == old { node.inputs[i] = new }
            for sub in node.subgraphs { sub.replaceOuterReferences(of: old, with: new) }
        }
    }

    /// Replaces reads of the enclosing scope's value `old` by `new` in this subgraph and
    /// its own subgraphs, unless one of them defines `old` itself.
    public func replaceOuterReferences(of old: String, with new: String) {
        let shadowed = inputs.contains { $0.name == old } || initializers[old] != nil
        if shadowed { return }
        for node in nodes {
            if node.outputs.contains(old) { return }
            for (i, input) in node.inputs.enumerated() where input == old { node.inputs[i] = new }
            for sub in node.subgraphs { sub.replaceOuterReferences(of: old, with: new) }
        }
        for (i, o) in outputs.enumerated() where o.name == old {
            // A subgraph output naming an outer value: rename it through an Identity-free alias.
            outputs[i].name = new
        }
    }

    /// Renames the value `old` (its producer and all reads) to `new`.
    public func rename(value old: String, to new: String) {
        for node in nodes {
            for (i, o) in node.outputs.enumerated() where o == old { node.outputs[i] = new }
        }
        replaceUses(of: old, with: new)
        if let t = valueTypes.removeValue(forKey: old) { valueTypes[new] = t }
    }

    /// A value name not yet used in this graph, derived from `base`.
    public func freshName(_ base: String) -> String {
        var used = Set(inputs.map(\.name)).union(initializers.keys).union(outputs.map(\.name))
        for n in nodes { used.formUnion(n.outputs) }
        if !used.contains(base) { return base }
        var k = 1
        while used.contains("\(base)_\(k)") { k += 1 }
        return "\(base)_\(k)"
    }

    /// A node name not yet used in this graph.
    public func freshNodeName(_ base: String) -> String {
        let used = Set(nodes.map(\.name))
        if !used.contains(base) { return base }
        var k = 1
        while used.contains("\(base)_\(k)") { k += 1 }
        return "\(base)_\(k)"
    }

    /// Removes an initializer and its graph-input entry, if any.
    public func removeInitializer(_ name: String) {
        initializers[name] = nil
        initializerOrder.removeAll { $0 == name }
        inputs.removeAll { $0.name == name }
    }
}

extension Graph {
    /// A deep copy: nodes and subgraphs are new objects, so passes on the copy leave
    /// this graph as it is (tensors are values and share their storage until written).
    public func copy() -> Graph {
        let g = Graph(name: name, inputs: inputs, outputs: outputs, nodes: nodes.map { $0.copy() },
                      initializers: initializerOrder.compactMap { n in initializers[n].map { (n, $0) } }, valueTypes: valueTypes)
        return g
    }
}

extension Node {
    /// A copy with its subgraphs copied too.
    public func copy() -> Node {
        var copied = attributes
        for (key, value) in attributes {
            switch value {
            case .graph(let s): if let g = s as? Graph { copied[key] = .graph(g.copy()) }
            case .graphs(let ss): copied[key] = .graphs(ss.map { ($0 as? Graph)?.copy() ?? $0 })
            default: break
            }
        }
        return Node(name: name, opType: opType, domain: domain, inputs: inputs, outputs: outputs, attributes: copied, fusedFrom: fusedFrom)
    }
}

extension Model {
    /// A deep copy of the model (its graph copied as `Graph.copy` does).
    public func copy() -> Model {
        Model(graph: graph.copy(), opsets: opsets, irVersion: irVersion, producerName: producerName, producerVersion: producerVersion,
              domain: domain, modelVersion: modelVersion, docString: docString, metadata: metadata)
    }
}
