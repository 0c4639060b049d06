import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// A graph transformation. It reports whether it changed anything, so pipelines
/// can stop at a fixpoint and idempotence can be tested.
public protocol Pass {
    /// Name used by --passes, --skip, --print-ir-after and the statistics.
    var name: String { get }
    /// One-line description for docs and --help.
    var summary: String { get }
    /// Transforms the model's main graph; returns true when it changed it.
    func run(_ context: PassContext) throws -> Bool
}

/// State shared by the passes of one pipeline run.
public final class PassContext {
    public let model: Model
    public var graph: Graph { model.graph }
    /// Largest tensor constant folding may create, in elements (2^28: one GiB of floats).
    public var foldLimit = 1 << 28
    /// Seconds spent in each pass.
    public var seconds: [String: Double] = [:]
    /// Only rewrite into standard ONNX ops (no ai.anvil fused ops).
    public var standardOnly = false
    /// Counts per pass: what each did ("nodes removed" → 12).
    public var statistics: [String: [String: Int]] = [:]
    /// Passes in the order they ran (a pass may appear more than once).
    public var history: [String] = []
    /// The current pass, for statistics.
    var current = ""

    public init(model: Model) { self.model = model }

    /// Adds to a statistic of the current pass.
    public func count(_ what: String, _ n: Int = 1) {
        statistics[current, default: [:]][what, default: 0] += n
    }

    /// The opset version of a domain in this model.
    public func opset(_ domain: String = "") -> Int { model.opsetVersion(domain: domain) ?? 0 }

    /// Where a recognized function goes: the standard op when the model's opset has
    /// it, else Anvil's op of the same semantics (nil when only standard ops are allowed).
    public func domainFor(_ op: String, standardSince: Int) -> String? {
        if opset() >= standardSince { return "" }
        if standardOnly { return nil }
        useAnvilDomain()
        return anvilDomain
    }

    /// Records that the model now uses ai.anvil ops (adds the opset import).
    public func useAnvilDomain() {
        if model.opsetVersion(domain: anvilDomain) == nil { model.opsets.append(OpsetImport(domain: anvilDomain, version: 1)) }
    }

    /// Facts from a fresh shape inference over the current graph. Intermediate types
    /// are recomputed from scratch: a pass may have changed them (pruned channels).
    public func inferFacts() throws -> [String: ValueFacts] {
        model.graph.valueTypes = [:]
        var inference = ShapeInference(model: model)
        return try inference.run()
    }
}

/// What a rewrite rule wants changed around the node it matched.
public struct Patch {
    /// Nodes to delete (the matched subgraph, usually including the root).
    public var remove: [Node] = []
    /// Nodes to insert where the root was, in order.
    public var add: [Node] = []
    /// Reads of the first value are redirected to the second.
    public var replace: [(String, String)] = []
    /// Nodes replaced in place by new ones (keeping their positions in the graph).
    public var substitute: [(Node, Node)] = []
    /// Values renamed (producer and reads): lets a node take over a graph output's name.
    public var rename: [(String, String)] = []
    /// Initializers to add.
    public var initializers: [(String, Tensor)] = []
    /// Statistic to count when applied.
    public var statistic: String

    public init(statistic: String, remove: [Node] = [], add: [Node] = [], replace: [(String, String)] = [],
                rename: [(String, String)] = [], initializers: [(String, Tensor)] = []) {
        self.statistic = statistic
        self.remove = remove
        self.add = add
        self.replace = replace
        self.rename = rename
        self.initializers = initializers
    }
}

/// A local rewrite: looks at one node (the root of a pattern) and returns a patch,
/// or nil for "no match". Matching never mutates the graph.
public struct RewriteRule: Sendable {
    public let name: String
    /// Op types the root may have (empty: any).
    public let roots: Set<String>
    public let match: @Sendable (Node, RewriteContext) throws -> Patch?

    public init(_ name: String, roots: Set<String>, match: @escaping @Sendable (Node, RewriteContext) throws -> Patch?) {
        self.name = name
        self.roots = roots
        self.match = match
    }
}

/// What a rule may look at while matching.
public struct RewriteContext {
    public let pass: PassContext
    public let graph: Graph
    public let uses: UseIndex
    public let facts: [String: ValueFacts]

    /// The constant value of a name: an initializer, or inferred constant.
    public func constant(_ name: String) -> Tensor? {
        guard !name.isEmpty else { return nil }
        return graph.initializers[name] ?? facts[name]?.constant
    }

    /// The node producing a value, if it is produced in this graph.
    public func producer(_ name: String) -> Node? { uses.producer[name] }

    /// The inferred type of a value.
    public func type(_ name: String) -> TensorType { facts[name]?.type ?? graph.type(of: name) ?? .unknown }

    /// A patch that removes `node` and makes every read of `output` read `input`
    /// instead; nil when that would change the graph's interface.
    public func bypass(_ node: Node, output: String, input: String, statistic: String) -> Patch? {
        if !uses.graphOutputs.contains(output) {
            return Patch(statistic: statistic, remove: [node], replace: [(output, input)])
        }
        // The output is a graph output: let the input's producer take over its name,
        // when the input is an intermediate value read only here.
        guard producer(input) != nil, !uses.graphOutputs.contains(input), uses.useCount(input) == 1 else { return nil }
        return Patch(statistic: statistic, remove: [node], rename: [(input, output)])
    }
}

/// Applies a list of rewrite rules to a fixpoint, with an iteration cap: the one
/// driver behind every pass made of local rewrites.
public struct RewriteDriver {
    public let rules: [RewriteRule]
    /// Whether the rules need shape facts (costs an inference per sweep).
    public let needsFacts: Bool
    public var maxSweeps = 64

    public init(needsFacts: Bool = true, _ rules: [RewriteRule]) {
        self.rules = rules
        self.needsFacts = needsFacts
    }

    public func run(_ context: PassContext) throws -> Bool {
        var changed = false
        for _ in 0..<maxSweeps {
            guard try sweep(context) else { return changed }
            changed = true
        }
        return changed
    }

    /// One pass over the nodes; applies at most one patch per node visited.
    func sweep(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        let facts = needsFacts ? try context.inferFacts() : [:]
        var applied = false
        var uses = UseIndex(graph)
        var removed = Set<ObjectIdentifier>()
        for node in graph.nodes where !removed.contains(ObjectIdentifier(node)) {
            for rule in rules where rule.roots.isEmpty || rule.roots.contains(node.opType) {
                let ctx = RewriteContext(pass: context, graph: graph, uses: uses, facts: facts)
                guard let patch = try rule.match(node, ctx) else { continue }
                apply(patch, at: node, in: graph)
                for n in patch.remove + patch.substitute.map(\.0) { removed.insert(ObjectIdentifier(n)) }
                context.count(patch.statistic)
                applied = true
                uses = UseIndex(graph)
                break
            }
        }
        return applied
    }

    func apply(_ patch: Patch, at root: Node, in graph: Graph) {
        for (name, t) in patch.initializers { graph.setInitializer(name, t) }
        for (old, new) in patch.substitute {
            if let i = graph.nodes.firstIndex(where: { $0 === old }) { graph.nodes[i] = new }
        }
        let position = graph.nodes.firstIndex { $0 === root } ?? graph.nodes.count
        let removeIDs = Set(patch.remove.map(ObjectIdentifier.init))
        let before = graph.nodes[..<position].filter { !removeIDs.contains(ObjectIdentifier($0)) }
        let after = graph.nodes[position...].filter { !removeIDs.contains(ObjectIdentifier($0)) }
        graph.nodes = before + patch.add + after
        for (old, new) in patch.replace { graph.replaceUses(of: old, with: new) }
        for (old, new) in patch.rename { graph.rename(value: old, to: new) }
    }
}
