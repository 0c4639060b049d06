import AnvilCore
import AnvilKernels
import AnvilIR

/// Runs an IR graph with the reference kernels, node by node, including If, Loop
/// and Scan bodies. It is the oracle every fast path is compared with: it checks
/// every input against the graph's declarations and never guesses.
public struct ReferenceExecutor {
    public let model: Model
    /// Called with every value a node of the main graph or a subgraph produces (for tests and debugging).
    public var observe: ((_ name: String, _ value: Tensor) -> Void)?

    public init(model: Model) { self.model = model }

    /// Ops of the model (recursively) that the registry lacks, as "node (op)" strings.
    public func unsupportedNodes() -> [String] {
        var missing: [String] = []
        model.graph.forEachNodeRecursively { node, _ in
            let opset = model.opsetVersion(domain: node.domain) ?? 0
            if OpRegistry.lookup(domain: node.domain, opType: node.opType, opset: opset) == nil {
                missing.append("\(node.name) (\(node.qualifiedOpType))")
            }
        }
        return missing
    }

    /// Runs the main graph. Every runtime input must be given, with a type and
    /// shape that fit the declaration; returns outputs in graph order.
    public func run(_ inputs: [String: Tensor]) throws -> [(name: String, value: Tensor)] {
        let graph = model.graph
        try checkInputs(inputs, graph: graph)
        var env: [String: Tensor] = graph.initializers
        for (k, v) in inputs { env[k] = v }
        let values = try execute(graph, env: env)
        return zip(graph.outputs.map(\.name), values).map { ($0, $1) }
    }

    /// Checks names, element types, ranks and known dimensions; binds symbolic
    /// dimensions consistently across inputs.
    func checkInputs(_ inputs: [String: Tensor], graph: Graph) throws {
        try InputCheck.check(inputs, declared: graph.runtimeInputs.map { ($0.name, $0.type) }, allNames: Set(graph.inputs.map(\.name)))
    }

    /// Executes one graph with `env` holding its inputs, initializers and outer-scope values.
    func execute(_ graph: Graph, env initial: [String: Tensor]) throws -> [Tensor] {
        var env = initial
        // Free each intermediate after its last use so large models fit in memory.
        var lastUse: [String: Int] = [:]
        for (i, node) in graph.nodes.enumerated() {
            for input in node.inputs where !input.isEmpty { lastUse[input] = i }
            for sub in node.subgraphs { for name in UseIndex.outerReferences(sub) { lastUse[name] = i } }
        }
        let keep = Set(graph.outputs.map(\.name))
        for (i, node) in graph.nodes.enumerated() {
            let opset = model.opsetVersion(domain: node.domain) ?? 0
            guard let def = OpRegistry.lookup(domain: node.domain, opType: node.opType, opset: opset) else {
                throw AnvilError.unsupportedOp(node: node.name, op: node.opType, domain: node.domain, version: opset)
            }
            var args: [Tensor?] = []
            for input in node.inputs {
                if input.isEmpty { args.append(nil); continue }
                guard let v = env[input] else {
                    throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "input '\(input)' has no value (missing graph input or initializer?)")
                }
                args.append(v)
            }
            let scope = env
            let context = EvalContext(node: node, opset: opset, inputs: args) { body, subInputs in
                guard let sub = body as? Graph else {
                    throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "subgraph '\(body.name)' is not an IR graph")
                }
                guard subInputs.count == sub.inputs.count else {
                    throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "subgraph '\(sub.name)' takes \(sub.inputs.count) inputs, given \(subInputs.count)")
                }
                var subEnv = scope
                for (k, v) in sub.initializers { subEnv[k] = v }
                for (info, value) in zip(sub.inputs, subInputs) { subEnv[info.name] = value }
                return try self.execute(sub, env: subEnv)
            }
            let results: [Tensor]
            do {
                results = try def.evaluate(context)
            } catch AnvilError.invalidTensor(let name, let reason) {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: name.isEmpty || name == node.opType ? reason : "\(name): \(reason)")
            }
            let wanted = node.outputs.filter { !$0.isEmpty }.count
            guard results.count >= wanted || results.count >= node.outputs.count else {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "produced \(results.count) outputs, the node names \(node.outputs.count)")
            }
            for (name, value) in zip(node.outputs, results) where !name.isEmpty {
                env[name] = value
                observe?(name, value)
            }
            for input in Set(node.inputs) where lastUse[input] == i && !keep.contains(input) && initial[input] == nil {
                env[input] = nil
            }
        }
        return try graph.outputs.map { out in
            guard let v = env[out.name] else {
                throw AnvilError.invalidGraph(graph: graph.name, reason: "output '\(out.name)' was not produced")
            }
            return v
        }
    }
}
