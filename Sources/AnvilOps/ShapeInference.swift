import AnvilCore
import AnvilKernels
import AnvilIR

/// What inference knows about one value: its type, its value when constant, and
/// for small int64 vectors that describe shapes, their elements as dimensions
/// (so `Shape → Gather → Concat → Reshape` chains stay symbolic).
public struct ValueFacts: Equatable, Sendable {
    public var type: TensorType
    public var constant: Tensor?
    /// Elements of a 1-D (or scalar) int tensor as dimensions, when known symbolically.
    public var dims: [Dim]?

    public init(type: TensorType, constant: Tensor? = nil, dims: [Dim]? = nil) {
        self.type = type
        self.constant = constant
        self.dims = dims
    }

    public init(constant: Tensor) {
        self.type = constant.type
        self.constant = constant
        if (constant.dataType == .int64 || constant.dataType == .int32), constant.rank <= 1, constant.count <= 64 {
            self.dims = constant.int64s.map { .known(Int($0)) }
        }
    }

    public static let unknown = ValueFacts(type: .unknown)
}

/// What an inference rule sees.
public struct InferContext {
    public let node: Node
    public let opset: Int
    public let inputs: [ValueFacts?]
    /// Makes a fresh symbolic dimension for sizes only known at run time (NonZero's count).
    public let freshSymbol: () -> Dim
    /// Records that two symbols are the same size (a broadcast of two symbolic sizes in a
    /// valid model: exporters name each input's axes apart even when they must agree).
    public var unify: (String, String) -> Void = { _, _ in }
    public var attributes: AttributeReader { AttributeReader(node: node) }

    public func fail(_ reason: String) -> AnvilError { .invalidNode(node: node.name, op: node.opType, reason: reason) }

    /// The facts of input `i`, unknown when absent.
    public func input(_ i: Int) -> ValueFacts { i < inputs.count ? inputs[i] ?? .unknown : .unknown }
    /// Whether input `i` is given.
    public func has(_ i: Int) -> Bool { i < inputs.count && inputs[i] != nil }
    public func type(_ i: Int) -> TensorType { input(i).type }
    public func dims(_ i: Int) -> [Dim]? { input(i).type.dims }
    /// The value of input `i` as ints, when constant.
    public func ints(_ i: Int) -> [Int]? { input(i).constant.map { $0.int64s.map { Int(clamping: $0) } } }
    public func axis(_ a: Int, rank: Int) throws -> Int {
        guard let n = ShapeMath.normalizeAxis(a, rank: rank) else { throw fail("axis \(a) is out of range for rank \(rank)") }
        return n
    }
}

/// A shape-and-type rule: output facts from input facts (unknown where it cannot tell).
public typealias InferenceRule = @Sendable (InferContext) throws -> [ValueFacts]

/// Infers the type of every value of a model, including subgraphs, recording the
/// results in each graph's `valueTypes`. Declared types (value_info, outputs) are
/// merged with inferred ones; a definite conflict is an error naming the node.
public struct ShapeInference {
    public let model: Model
    /// Evaluate nodes whose inputs are all constant (small tensors only) to learn exact values.
    public var foldConstantsUpTo = 1 << 16
    private var symbolCounter = 0
    /// Symbols known to be the same size, each mapped towards a representative.
    private let equalSymbols = SymbolUnion()

    public init(model: Model) { self.model = model }

    /// Runs inference over the main graph; returns the facts of every value.
    @discardableResult
    public mutating func run() throws -> [String: ValueFacts] {
        // Each graph once (the main graph and every subgraph), not once per node.
        var graphs = [model.graph]
        model.graph.forEachNodeRecursively { node, _ in graphs += node.subgraphs }
        // The fresh symbols ("node:N") a previous run recorded number that run's sizes: a value
        // this run cannot name would adopt one through its recorded type, and this run may give
        // the same name (unnamed nodes) to another size. They go; this run makes its own.
        for g in graphs {
            for (name, t) in g.valueTypes where t.dims?.contains(where: \.isMadeUp) == true { g.valueTypes[name] = withoutFreshSymbols(t) }
            for i in g.outputs.indices { g.outputs[i].type = withoutFreshSymbols(g.outputs[i].type) }
        }
        let facts = try infer(model.graph, outer: [:])
        guard !equalSymbols.isEmpty else { return facts }
        // Symbols unified along the way name one size: every type says so.
        let union = equalSymbols
        for g in graphs {
            for (name, t) in g.valueTypes { g.valueTypes[name] = union.normalized(t) }
            for i in g.outputs.indices { g.outputs[i].type = union.normalized(g.outputs[i].type) }
        }
        return facts.mapValues { union.normalized($0) }
    }

    /// Infers a graph given the facts of values visible from enclosing scopes.
    public mutating func infer(_ graph: Graph, outer: [String: ValueFacts], inputFacts: [ValueFacts]? = nil) throws -> [String: ValueFacts] {
        var facts = outer
        for (i, input) in graph.inputs.enumerated() {
            if let t = graph.initializers[input.name] {
                facts[input.name] = ValueFacts(constant: t)
            } else if let given = inputFacts, i < given.count {
                facts[input.name] = ValueFacts(type: merge(input.type, given[i].type) ?? input.type, constant: nil, dims: given[i].dims)
            } else {
                facts[input.name] = ValueFacts(type: input.type)
            }
        }
        for (name, t) in graph.initializers where facts[name] == nil || graph.inputs.contains(where: { $0.name == name }) == false {
            facts[name] = ValueFacts(constant: t)
        }
        for node in graph.nodes {
            let opset = model.opsetVersion(domain: node.domain) ?? 0
            let inputs: [ValueFacts?] = node.inputs.map { $0.isEmpty ? nil : equalSymbols.normalized(facts[$0] ?? .unknown) }
            var outputs = try inferNode(node, opset: opset, inputs: inputs, scope: facts)
            while outputs.count < node.outputs.count { outputs.append(.unknown) }
            for (name, var out) in zip(node.outputs, outputs) where !name.isEmpty {
                if let declared = graph.valueTypes[name] ?? graph.outputs.first(where: { $0.name == name })?.type {
                    if let merged = merge(out.type, declared) {
                        out.type = merged
                    } else if let a = out.type.elementType, let b = declared.elementType, a != b {
                        throw AnvilError.invalidNode(node: node.name, op: node.opType,
                                                     reason: "output '\(name)' is inferred as \(out.type) but declared \(declared)")
                    } else {
                        // A declared shape the computation contradicts (an exporter's stale annotation):
                        // the computed one wins, as in ONNX Runtime, with a warning naming both.
                        let warning = "node '\(node.name)' (\(node.opType)): output '\(name)' is declared \(declared) but computes \(out.type); using the computed shape"
                        if !model.warnings.contains(warning) { model.warnings.append(warning) }
                        out.type = TensorType(out.type.elementType ?? declared.elementType, out.type.dims)
                    }
                }
                // A tensor the model fixes the size of must fit the memory limit.
                if let shape = out.type.concreteShape {
                    try MemoryPolicy.checkedCount(shape, out.type.elementType ?? .float, for: "node '\(node.name)' (\(node.opType)): output '\(name)'")
                }
                facts[name] = out
                graph.valueTypes[name] = out.type
                if let i = graph.outputs.firstIndex(where: { $0.name == name }) { graph.outputs[i].type = out.type }
            }
        }
        return facts
    }

    mutating func inferNode(_ node: Node, opset: Int, inputs: [ValueFacts?], scope: [String: ValueFacts]) throws -> [ValueFacts] {
        // Control flow infers its bodies with the outer facts in scope.
        switch node.domain.isEmpty ? node.opType : "" {
        case "If":
            let thenFacts = try branchOutputs(node, "then_branch", scope: scope)
            let elseFacts = try branchOutputs(node, "else_branch", scope: scope)
            return zip(thenFacts, elseFacts).map { ValueFacts(type: unify($0.type, $1.type)) }
        case "Loop", "Scan":
            if let body = (try? AttributeReader(node: node).graph("body")) as? Graph {
                var given: [ValueFacts] = []
                if node.opType == "Loop" {
                    given = [ValueFacts(type: TensorType(.int64, shape: [])), ValueFacts(type: TensorType(.bool, shape: []))]
                        + inputs.dropFirst(2).map { ValueFacts(type: $0?.type.elementType.map { TensorType($0, nil) } ?? .unknown) }
                }
                _ = try infer(body, outer: scope, inputFacts: given.isEmpty ? nil : given)
            }
        default: break
        }
        guard let def = OpRegistry.lookup(domain: node.domain, opType: node.opType, opset: opset) else {
            return node.outputs.map { _ in .unknown }
        }
        // A node with more or fewer inputs or outputs than its op takes can only fail at run time.
        if node.domain.isEmpty || node.domain == "ai.onnx", let arity = standardOpArity[node.opType] {
            let inputs = (node.inputs.lastIndex { !$0.isEmpty } ?? -1) + 1, outputs = (node.outputs.lastIndex { !$0.isEmpty } ?? -1) + 1
            func range(_ r: ClosedRange<Int>) -> String { r.upperBound == Int(Int32.max) ? "at least \(r.lowerBound)" : r.count == 1 ? "\(r.lowerBound)" : "\(r.lowerBound) to \(r.upperBound)" }
            // Empty inputs count toward the fewest (a Loop's M and cond may be ""), not toward the most.
            guard node.inputs.count >= arity.inputs.lowerBound, inputs <= arity.inputs.upperBound else {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "has \(node.inputs.count < arity.inputs.lowerBound ? node.inputs.count : inputs) inputs; \(node.opType) takes \(range(arity.inputs))")
            }
            guard arity.outputs.contains(outputs) || outputs == 0 && node.outputs.isEmpty == false else {
                throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "has \(outputs) outputs; \(node.opType) gives \(range(arity.outputs))")
            }
        }
        if node.opType == "Constant", node.domain.isEmpty,
           let value = try? def.evaluate(EvalContext(node: node, opset: opset, inputs: [], runSubgraph: { _, _ in [] })) {
            return value.map { ValueFacts(constant: $0) }
        }
        func inferred() throws -> [ValueFacts] {
            guard let rule = def.infer else { return node.outputs.map { _ in .unknown } }
            var counter = symbolCounter
            var context = InferContext(node: node, opset: opset, inputs: inputs) {
                counter += 1
                return .symbol("\(node.name):\(counter)")
            }
            let union = equalSymbols
            context.unify = { union.unite($0, $1) }
            let result = try rule(context)
            symbolCounter = counter
            return result
        }
        // Small all-constant nodes are evaluated: their outputs are then known exactly. Not
        // when the rule says an output is large (a ConstantOfShape of 2^33 elements would be
        // allocated before its size was checked).
        if !inputs.isEmpty, node.subgraphs.isEmpty, inputs.allSatisfy({ $0 == nil || $0?.constant != nil }),
           inputs.compactMap({ $0?.constant?.count }).reduce(0, +) <= foldConstantsUpTo {
            let sizes = (try? inferred())?.map { $0.type.concreteShape.map { ShapeMath.elementCount($0) ?? Int.max } ?? 0 } ?? []
            if sizes.allSatisfy({ $0 <= foldConstantsUpTo }),
               let values = try? def.evaluate(EvalContext(node: node, opset: opset, inputs: inputs.map { $0?.constant }, runSubgraph: { _, _ in [] })),
               values.allSatisfy({ $0.count <= foldConstantsUpTo }) {
                return values.map { ValueFacts(constant: $0) }
            }
        }
        return try inferred()
    }

    mutating func branchOutputs(_ node: Node, _ name: String, scope: [String: ValueFacts]) throws -> [ValueFacts] {
        guard let g = try AttributeReader(node: node).graph(name) as? Graph else { return [] }
        let facts = try infer(g, outer: scope)
        return g.outputs.map { facts[$0.name] ?? ValueFacts(type: $0.type) }
    }
}

/// `t` with its made-up symbols unknown.
func withoutFreshSymbols(_ t: TensorType) -> TensorType {
    guard let dims = t.dims, dims.contains(where: \.isMadeUp) else { return t }
    return TensorType(t.elementType, dims.map { $0.isMadeUp ? .unknown : $0 })
}

/// The more specific of two compatible types, nil when they conflict.
public func merge(_ a: TensorType, _ b: TensorType) -> TensorType? {
    if let x = a.elementType, let y = b.elementType, x != y { return nil }
    let element = a.elementType ?? b.elementType
    guard let da = a.dims else { return TensorType(element, b.dims) }
    guard let db = b.dims else { return TensorType(element, da) }
    guard da.count == db.count else { return nil }
    var dims: [Dim] = []
    for (x, y) in zip(da, db) {
        switch (x, y) {
        case (.known(let u), .known(let v)): if u != v { return nil }; dims.append(x)
        case (.known, _): dims.append(x)
        case (_, .known): dims.append(y)
        case (.symbol, _): dims.append(x)
        default: dims.append(y)
        }
    }
    return TensorType(element, dims)
}

/// The common type of two alternatives (If branches): dims that differ become unknown.
public func unify(_ a: TensorType, _ b: TensorType) -> TensorType {
    let element = a.elementType == b.elementType ? a.elementType : nil
    guard let da = a.dims, let db = b.dims, da.count == db.count else { return TensorType(element, nil) }
    return TensorType(element, zip(da, db).map { $0 == $1 ? $0 : .unknown })
}

/// Symbols that name the same size (union-find), with the first-seen name of each set
/// as its representative.
final class SymbolUnion {
    private var parent: [String: String] = [:]

    var isEmpty: Bool { parent.isEmpty }

    func find(_ s: String) -> String {
        guard parent[s] != nil else { return s }
        var r = s
        while let p = parent[r], p != r { r = p }
        // Path compression: every symbol on the way points at the representative.
        var c = s
        while let p = parent[c], p != r { parent[c] = r; c = p }
        return r
    }

    func unite(_ a: String, _ b: String) {
        let (x, y) = (find(a), find(b))
        if x != y { parent[y] = x }
    }

    func normalized(_ d: Dim) -> Dim {
        if case .symbol(let s) = d { return .symbol(find(s)) }
        return d
    }

    func normalized(_ t: TensorType) -> TensorType {
        guard !parent.isEmpty, let dims = t.dims else { return t }
        return TensorType(t.elementType, dims.map(normalized))
    }

    func normalized(_ f: ValueFacts) -> ValueFacts {
        guard !parent.isEmpty else { return f }
        var out = f
        out.type = normalized(f.type)
        out.dims = f.dims?.map(normalized)
        return out
    }
}
