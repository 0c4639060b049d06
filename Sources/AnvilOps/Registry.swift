import AnvilCore
import AnvilIR

/// Runs a subgraph (If branch, Loop or Scan body) with the given values bound
/// to its inputs; outer-scope values stay visible. Supplied by the executor.
public typealias SubgraphRunner = (_ graph: Graph, _ inputs: [Tensor]) throws -> [Tensor]

/// What an op's evaluation sees: the node, its opset, its input values.
public struct EvalContext {
    public let node: Node
    public let opset: Int
    public let inputs: [Tensor?]
    public let runSubgraph: SubgraphRunner
    public var attributes: AttributeReader { AttributeReader(node: node) }

    public init(node: Node, opset: Int, inputs: [Tensor?], runSubgraph: @escaping SubgraphRunner) {
        self.node = node
        self.opset = opset
        self.inputs = inputs
        self.runSubgraph = runSubgraph
    }

    /// A required input; throws naming the node when it is absent.
    public func input(_ i: Int) throws -> Tensor {
        guard i < inputs.count, let t = inputs[i] else {
            throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "required input \(i) is missing")
        }
        return t
    }

    /// An optional input (nil when omitted or empty-named).
    public func optionalInput(_ i: Int) -> Tensor? { i < inputs.count ? inputs[i] : nil }

    /// An error about this node.
    public func fail(_ reason: String) -> AnvilError {
        .invalidNode(node: node.name, op: node.opType, reason: reason)
    }

    /// Normalizes an axis against a rank or throws naming the node.
    public func axis(_ a: Int, rank: Int, name: String = "axis") throws -> Int {
        guard let n = ShapeMath.normalizeAxis(a, rank: rank) else {
            throw fail("\(name) \(a) is out of range for rank \(rank)")
        }
        return n
    }
}

/// Typed access to a node's attributes with ONNX defaults; a wrong kind is an
/// error naming the node, the op and the attribute.
public struct AttributeReader {
    public let node: Node

    public init(node: Node) { self.node = node }

    func wrongKind(_ name: String, _ expected: String, _ found: Attribute) -> AnvilError {
        .invalidNode(node: node.name, op: node.opType, reason: "attribute '\(name)' must be \(expected), found \(found.kindName)")
    }

    public func has(_ name: String) -> Bool { node.attributes[name] != nil }

    public func int(_ name: String) throws -> Int? {
        guard let a = node.attributes[name] else { return nil }
        guard case .int(let v) = a else { throw wrongKind(name, "an int", a) }
        guard let i = Int(exactly: v) else { throw wrongKind(name, "a representable int", a) }
        return i
    }
    public func int(_ name: String, _ defaultValue: Int) throws -> Int { try int(name) ?? defaultValue }

    public func float(_ name: String) throws -> Float? {
        guard let a = node.attributes[name] else { return nil }
        switch a {
        case .float(let v): return v
        case .int(let v): return Float(v)
        default: throw wrongKind(name, "a float", a)
        }
    }
    public func float(_ name: String, _ defaultValue: Float) throws -> Float { try float(name) ?? defaultValue }

    public func string(_ name: String) throws -> String? {
        guard let a = node.attributes[name] else { return nil }
        guard case .string(let v) = a else { throw wrongKind(name, "a string", a) }
        return v
    }
    public func string(_ name: String, _ defaultValue: String) throws -> String { try string(name) ?? defaultValue }

    public func ints(_ name: String) throws -> [Int]? {
        guard let a = node.attributes[name] else { return nil }
        switch a {
        case .ints(let v): return v.map { Int(clamping: $0) }
        case .int(let v): return [Int(clamping: v)]
        default: throw wrongKind(name, "a list of ints", a)
        }
    }

    public func floats(_ name: String) throws -> [Float]? {
        guard let a = node.attributes[name] else { return nil }
        switch a {
        case .floats(let v): return v
        case .float(let v): return [v]
        default: throw wrongKind(name, "a list of floats", a)
        }
    }

    public func strings(_ name: String) throws -> [String]? {
        guard let a = node.attributes[name] else { return nil }
        guard case .strings(let v) = a else { throw wrongKind(name, "a list of strings", a) }
        return v
    }

    public func tensor(_ name: String) throws -> Tensor? {
        guard let a = node.attributes[name] else { return nil }
        guard case .tensor(let v) = a else { throw wrongKind(name, "a tensor", a) }
        return v
    }

    public func graph(_ name: String) throws -> Graph {
        guard let a = node.attributes[name] else {
            throw AnvilError.invalidNode(node: node.name, op: node.opType, reason: "required graph attribute '\(name)' is missing")
        }
        guard case .graph(let g) = a else { throw wrongKind(name, "a graph", a) }
        return g
    }
}

/// One op of the registry: identity, supported opset range and reference evaluation.
public struct OpDefinition: Sendable {
    public let opType: String
    public let domain: String
    /// Earliest opset version this definition implements.
    public let sinceVersion: Int
    public let evaluate: @Sendable (EvalContext) throws -> [Tensor]
    /// Shape and type inference; nil leaves the outputs unknown.
    public var infer: InferenceRule?
}

/// The op registry, keyed by domain and op type. Each op's evaluation lives in
/// the file of its family (Ops*.swift); the table is built once and never mutated.
public enum OpRegistry {
    /// Every supported op.
    public static let all: [String: OpDefinition] = {
        var b = RegistryBuilder()
        registerElementwise(&b)
        registerNeural(&b)
        registerReductions(&b)
        registerShapeOps(&b)
        registerControlFlow(&b)
        registerQuantization(&b)
        registerResize(&b)
        registerAttention(&b)
        registerRecurrent(&b)
        registerExtra(&b)
        registerAnvilOps(&b)
        registerInferenceRules(&b)
        registerAnvilInference(&b)
        return b.table
    }()

    static func key(_ domain: String, _ op: String) -> String {
        let d = domain == "ai.onnx" ? "" : domain
        return "\(d)::\(op)"
    }

    /// The definition for an op at an opset version, nil when unsupported.
    public static func lookup(domain: String, opType: String, opset: Int) -> OpDefinition? {
        guard let def = all[key(domain, opType)], opset >= def.sinceVersion else { return nil }
        return def
    }

    /// Names of all supported ops in the default domain, sorted.
    public static var supportedOpTypes: [String] {
        all.values.filter { $0.domain.isEmpty }.map(\.opType).sorted()
    }
}

/// Collects definitions while the registry is built.
struct RegistryBuilder {
    var table: [String: OpDefinition] = [:]

    mutating func add(_ op: String, domain: String = "", since: Int = 1, _ eval: @escaping @Sendable (EvalContext) throws -> [Tensor]) {
        table[OpRegistry.key(domain, op)] = OpDefinition(opType: op, domain: domain, sinceVersion: since, evaluate: eval)
    }

    /// Attaches one inference rule to several ops (a family shares its rule).
    mutating func infer(_ ops: [String], domain: String = "", _ rule: @escaping InferenceRule) {
        for op in ops {
            let key = OpRegistry.key(domain, op)
            precondition(table[key] != nil, "inference rule for unregistered op \(op)")
            table[key]?.infer = rule
        }
    }

    /// Registers an op with one output.
    mutating func add1(_ op: String, domain: String = "", since: Int = 1, _ eval: @escaping @Sendable (EvalContext) throws -> Tensor) {
        add(op, domain: domain, since: since) { [try eval($0)] }
    }
}
