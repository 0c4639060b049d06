import AnvilCore
import Dispatch

/// A node as the graph interpreter reads it: an op applied to named values.
public protocol InterpretableNode {
    var name: String { get }
    var opType: String { get }
    var domain: String { get }
    /// Input value names, "" for an omitted optional input.
    var inputs: [String] { get }
    /// Output value names, "" for an omitted optional output.
    var outputs: [String] { get }
    /// Attributes; subgraph attributes hold graphs of the same kind.
    var attributes: [String: Attribute] { get }
}

/// A graph the interpreter runs: the builder's IR graph (conformance in AnvilOps)
/// and the runtime's engine graph. Subgraphs are graphs of the same type, held in
/// node attributes.
public protocol InterpretableGraph: Subgraph {
    associatedtype NodeType: InterpretableNode
    /// The nodes in execution (topological) order.
    var nodesInOrder: [NodeType] { get }
    /// Names of the declared inputs, in order (a subgraph's caller binds them by position).
    var inputNames: [String] { get }
    /// Names of the declared outputs, in order.
    var outputNames: [String] { get }
    /// Names of the graph's constants (initializers).
    var constantNames: [String] { get }
    /// A constant of this graph (not of enclosing ones), nil when it has none of that name.
    func constant(_ name: String) throws -> Tensor?
}

extension Layer: InterpretableNode {}

/// Runs a graph node by node with the kernel registry's reference kernels,
/// including If, Loop and Scan bodies: the engine's interpreter for graphs it
/// cannot plan, and (through `ReferenceExecutor`) the builder's oracle.
///
/// Every intermediate is freed after its last use (reads by subgraphs of later
/// nodes count as uses), so large models fit in memory. A subgraph sees the values
/// and constants of its enclosing graphs. Hooks observe values, time nodes and may
/// replace the reference kernel of a node.
public struct GraphInterpreter<Graph: InterpretableGraph> {
    public typealias Node = Graph.NodeType

    /// The opset a node's semantics follow (engine layers carry it; IR nodes take the model's import).
    let opset: (Node) -> Int
    /// Called with every value a node produces; `depth` is 0 in the graph run, 1 in its subgraphs, and so on.
    public var observe: ((_ name: String, _ value: Tensor, _ depth: Int) -> Void)?
    /// Called after each node with its wall time in milliseconds (nodes are timed only when set).
    public var time: ((_ node: Node, _ depth: Int, _ milliseconds: Double) -> Void)?
    /// Tried before the reference kernel of each node: results replace the kernel's, nil runs the kernel.
    public var evaluateFast: ((_ node: Node, _ depth: Int, _ context: EvalContext) throws -> [Tensor]?)?
    /// Tried before the interpreter runs a subgraph (an If branch, a Loop or Scan body) of
    /// `node`, with the values bound to the subgraph's inputs and a lookup of the values
    /// and constants it sees from enclosing scopes: results replace the subgraph's
    /// outputs, nil interprets it.
    public var runSubgraph: ((_ node: Node, _ depth: Int, _ body: Graph, _ inputs: [Tensor],
                              _ outer: (String) throws -> Tensor?) throws -> [Tensor]?)?

    public init(opset: @escaping (Node) -> Int) { self.opset = opset }

    /// Runs `graph` with `inputs` bound by name; returns its outputs in declaration order.
    /// Top-level nodes named in `skipping` are not run: `inputs` must then hold every
    /// output of theirs that the other nodes read (a plan computed them).
    /// `schedules` may be kept from run to run of the same graph (they depend on it alone).
    public func run(_ graph: Graph, inputs: [String: Tensor], skipping: Set<String> = [], schedules: Schedules = Schedules()) throws -> [Tensor] {
        try execute(graph, bound: inputs, outer: nil, depth: 0, schedules: schedules, skipping: skipping)
    }

    /// The values a subgraph sees from its enclosing graph: that graph's values when
    /// the node holding the subgraph runs, its constants, then its own enclosing scope.
    final class Scope {
        let values: [String: Tensor]
        let graph: Graph
        let parent: Scope?

        init(values: [String: Tensor], graph: Graph, parent: Scope?) {
            self.values = values
            self.graph = graph
            self.parent = parent
        }

        func lookup(_ name: String) throws -> Tensor? { try values[name] ?? graph.constant(name) ?? parent?.lookup(name) }
    }

    /// Per graph, the values whose last use is each node; computed once per run (Loop bodies
    /// run many times), or once for all runs of a graph by a caller that keeps them.
    public final class Schedules {
        private var releases: [ObjectIdentifier: [[String]]] = [:]

        public init() {}

        func releases(_ graph: Graph) -> [[String]] {
            if let known = releases[ObjectIdentifier(graph)] { return known }
            let nodes = graph.nodesInOrder
            var lastUse: [String: Int] = [:]
            for (i, node) in nodes.enumerated() {
                for input in node.inputs where !input.isEmpty { lastUse[input] = i }
                for sub in GraphInterpreter.subgraphs(of: node) { for name in GraphInterpreter.outerReferences(sub) { lastUse[name] = i } }
            }
            let outputs = Set(graph.outputNames)
            var byNode = [[String]](repeating: [], count: nodes.count)
            for (name, i) in lastUse where !outputs.contains(name) { byNode[i].append(name) }
            releases[ObjectIdentifier(graph)] = byNode
            return byNode
        }
    }

    /// Subgraphs held in a node's attributes.
    public static func subgraphs(of node: Node) -> [Graph] {
        node.attributes.values.flatMap { attribute -> [Graph] in
            switch attribute {
            case .graph(let g): [g as? Graph].compactMap { $0 }
            case .graphs(let gs): gs.compactMap { $0 as? Graph }
            default: []
            }
        }
    }

    /// Names a subgraph reads from enclosing scopes.
    public static func outerReferences(_ graph: Graph) -> Set<String> {
        var defined = Set(graph.inputNames).union(graph.constantNames)
        var free = Set<String>()
        for node in graph.nodesInOrder {
            for input in node.inputs where !input.isEmpty && !defined.contains(input) { free.insert(input) }
            for sub in subgraphs(of: node) { free.formUnion(outerReferences(sub).subtracting(defined)) }
            defined.formUnion(node.outputs)
        }
        for out in graph.outputNames where !defined.contains(out) { free.insert(out) }
        return free
    }

    /// Executes one graph: `bound` holds its inputs, `outer` the enclosing graphs' values.
    func execute(_ graph: Graph, bound: [String: Tensor], outer: Scope?, depth: Int, schedules: Schedules, skipping: Set<String> = []) throws -> [Tensor] {
        var env = bound
        /// Bytes of the values this run made and still holds.
        var held = 0
        func lookup(_ name: String) throws -> Tensor? { try env[name] ?? graph.constant(name) ?? outer?.lookup(name) }
        let releases = schedules.releases(graph)
        for (i, node) in graph.nodesInOrder.enumerated() {
            if !skipping.isEmpty, skipping.contains(node.name) { continue }
            let opset = opset(node)
            guard let def = KernelRegistry.lookup(domain: node.domain, opType: node.opType, opset: opset) else {
                throw AnvilError.unsupportedOp(node: node.name, op: node.opType, domain: node.domain, version: opset)
            }
            let args: [Tensor?] = try node.inputs.map { input in
                if input.isEmpty { return nil }
                guard let v = try lookup(input) else {
                    throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "input '\(input)' has no value (missing graph input or initializer?)")
                }
                return v
            }
            // The scope is a temporary: `env` is not copied when it changes after the node.
            // The memory policy counts the values alive here against each allocation the node makes.
            let results = try MemoryPolicy.$held.withValue(MemoryPolicy.held + held) {
                try evaluate(node, def, opset: opset, inputs: args, depth: depth, schedules: schedules,
                             scope: Scope(values: env, graph: graph, parent: outer))
            }
            let wanted = node.outputs.filter { !$0.isEmpty }.count
            guard results.count >= wanted || results.count >= node.outputs.count else {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "produced \(results.count) outputs, the node names \(node.outputs.count)")
            }
            for (name, value) in zip(node.outputs, results) where !name.isEmpty {
                if let old = env[name], bound[name] == nil { held -= old.byteCount }
                env[name] = value
                held += value.byteCount
                observe?(name, value, depth)
            }
            for name in releases[i] where bound[name] == nil {
                if let value = env.removeValue(forKey: name) { held -= value.byteCount }
            }
            if MemoryPolicy.held + held > MemoryPolicy.limit {
                throw AnvilError.memoryLimit(what: "the values alive after node '\(node.name)'", bytes: MemoryPolicy.held + held, limit: MemoryPolicy.limit)
            }
        }
        return try graph.outputNames.map { name in
            guard let v = try lookup(name) else {
                throw AnvilError.invalidGraph(graph: graph.name, reason: "output '\(name)' was not produced")
            }
            return v
        }
    }

    /// Runs one node: the fast hook, else the reference kernel; subgraphs run in `scope`.
    func evaluate(_ node: Node, _ def: KernelDefinition, opset: Int, inputs: [Tensor?], depth: Int, schedules: Schedules,
                  scope: Scope) throws -> [Tensor] {
        let context = EvalContext(name: node.name, opType: node.opType, domain: node.domain, outputCount: node.outputs.count,
                                  attributes: node.attributes, opset: opset, inputs: inputs) { body, values in
            guard let sub = body as? Graph else {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "subgraph '\(body.name)' is a \(type(of: body)), not a \(Graph.self)")
            }
            let names = sub.inputNames
            guard values.count == names.count else {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "subgraph '\(sub.name)' takes \(names.count) inputs, given \(values.count)")
            }
            if let hook = self.runSubgraph, let results = try hook(node, depth, sub, values, scope.lookup) { return results }
            return try self.execute(sub, bound: Dictionary(zip(names, values), uniquingKeysWith: { _, last in last }),
                                    outer: scope, depth: depth + 1, schedules: schedules)
        }
        let started = time == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        let results: [Tensor]
        do {
            results = try evaluateFast?(node, depth, context) ?? def.evaluate(context)
        } catch AnvilError.invalidTensor(let name, let reason) {
            throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: name.isEmpty || name == node.opType ? reason : "\(name): \(reason)")
        } catch AnvilError.memoryLimit(let what, let bytes, let limit) {
            throw AnvilError.memoryLimit(what: "node '\(node.name)' (\(node.opType)): \(what)", bytes: bytes, limit: limit)
        }
        if let time { time(node, depth, Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6) }
        return results
    }
}
