import AnvilCore
import AnvilKernels
import AnvilIR

/// Runs an IR model with the reference kernels, node by node, including If, Loop
/// and Scan bodies, on the graph interpreter the engine runtime shares. It is the
/// oracle every fast path is compared with: it checks every input against the
/// graph's declarations and never guesses.
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
        var interpreter = GraphInterpreter<Graph> { [model] in model.opsetVersion(domain: $0.domain) ?? 0 }
        if let observe { interpreter.observe = { name, value, _ in observe(name, value) } }
        let values = try interpreter.run(graph, inputs: inputs)
        return zip(graph.outputs.map(\.name), values).map { ($0, $1) }
    }

    /// Checks names, element types, ranks and known dimensions; binds symbolic
    /// dimensions consistently across inputs.
    func checkInputs(_ inputs: [String: Tensor], graph: Graph) throws {
        try InputCheck.check(inputs, declared: graph.runtimeInputs.map { ($0.name, $0.type) }, allNames: Set(graph.inputs.map(\.name)))
    }
}

extension Node: InterpretableNode {}

/// IR graphs run on the graph interpreter of AnvilKernels (AnvilIR cannot import it).
extension Graph: InterpretableGraph {
    public var nodesInOrder: [Node] { nodes }
    public var inputNames: [String] { inputs.map(\.name) }
    public var outputNames: [String] { outputs.map(\.name) }
    public var constantNames: [String] { Array(initializers.keys) }
    public func constant(_ name: String) -> Tensor? { initializers[name] }
}
