import AnvilCore

/// Runs a subgraph (If branch, Loop or Scan body) with the given values bound
/// to its inputs; outer-scope values stay visible. Supplied by the executor.
public typealias SubgraphRunner = (_ graph: any Subgraph, _ inputs: [Tensor]) throws -> [Tensor]

/// What an op's evaluation sees: the layer's name, op, attributes and opset, and
/// its input values. Built from an IR node by the builder side, from an engine
/// layer by the runtime.
public struct EvalContext {
    /// Name of the node or layer, for errors.
    public let name: String
    public let opType: String
    public let domain: String
    /// Number of outputs the node names (optional outputs may be skipped).
    public let outputCount: Int
    public let attributeValues: [String: Attribute]
    public let opset: Int
    public let inputs: [Tensor?]
    public let runSubgraph: SubgraphRunner
    public var attributes: AttributeReader { AttributeReader(attributes: attributeValues, name: name, opType: opType) }

    public init(name: String, opType: String, domain: String = "", outputCount: Int, attributes: [String: Attribute], opset: Int,
                inputs: [Tensor?], runSubgraph: @escaping SubgraphRunner) {
        self.name = name
        self.opType = opType
        self.domain = domain
        self.outputCount = outputCount
        self.attributeValues = attributes
        self.opset = opset
        self.inputs = inputs
        self.runSubgraph = runSubgraph
    }

    /// The same layer evaluated as another opset with other inputs (fused ops reuse standard ones).
    public func with(opset: Int, inputs: [Tensor?]) -> EvalContext {
        EvalContext(name: name, opType: opType, domain: domain, outputCount: outputCount, attributes: attributeValues,
                    opset: opset, inputs: inputs, runSubgraph: runSubgraph)
    }

    /// A required input; throws naming the node when it is absent.
    public func input(_ i: Int) throws -> Tensor {
        guard i < inputs.count, let t = inputs[i] else {
            throw AnvilError.invalidNode(node: name, op: opType, reason: "required input \(i) is missing")
        }
        return t
    }

    /// An optional input (nil when omitted or empty-named).
    public func optionalInput(_ i: Int) -> Tensor? { i < inputs.count ? inputs[i] : nil }

    /// An error about this node.
    public func fail(_ reason: String) -> AnvilError {
        .invalidNode(node: name, op: opType, reason: reason)
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
    public let attributes: [String: Attribute]
    let nodeName: String
    let opType: String

    public init(attributes: [String: Attribute], name: String, opType: String) {
        self.attributes = attributes
        self.nodeName = name
        self.opType = opType
    }

    func wrongKind(_ name: String, _ expected: String, _ found: Attribute) -> AnvilError {
        .invalidNode(node: nodeName, op: opType, reason: "attribute '\(name)' must be \(expected), found \(found.kindName)")
    }

    public func has(_ name: String) -> Bool { attributes[name] != nil }

    public func int(_ name: String) throws -> Int? {
        guard let a = attributes[name] else { return nil }
        guard case .int(let v) = a else { throw wrongKind(name, "an int", a) }
        guard let i = Int(exactly: v) else { throw wrongKind(name, "a representable int", a) }
        return i
    }
    public func int(_ name: String, _ defaultValue: Int) throws -> Int { try int(name) ?? defaultValue }

    public func float(_ name: String) throws -> Float? {
        guard let a = attributes[name] else { return nil }
        switch a {
        case .float(let v): return v
        case .int(let v): return Float(v)
        default: throw wrongKind(name, "a float", a)
        }
    }
    public func float(_ name: String, _ defaultValue: Float) throws -> Float { try float(name) ?? defaultValue }

    public func string(_ name: String) throws -> String? {
        guard let a = attributes[name] else { return nil }
        guard case .string(let v) = a else { throw wrongKind(name, "a string", a) }
        return v
    }
    public func string(_ name: String, _ defaultValue: String) throws -> String { try string(name) ?? defaultValue }

    public func ints(_ name: String) throws -> [Int]? {
        guard let a = attributes[name] else { return nil }
        switch a {
        case .ints(let v): return v.map { Int(clamping: $0) }
        case .int(let v): return [Int(clamping: v)]
        default: throw wrongKind(name, "a list of ints", a)
        }
    }

    public func floats(_ name: String) throws -> [Float]? {
        guard let a = attributes[name] else { return nil }
        switch a {
        case .floats(let v): return v
        case .float(let v): return [v]
        default: throw wrongKind(name, "a list of floats", a)
        }
    }

    public func strings(_ name: String) throws -> [String]? {
        guard let a = attributes[name] else { return nil }
        guard case .strings(let v) = a else { throw wrongKind(name, "a list of strings", a) }
        return v
    }

    public func tensor(_ name: String) throws -> Tensor? {
        guard let a = attributes[name] else { return nil }
        guard case .tensor(let v) = a else { throw wrongKind(name, "a tensor", a) }
        return v
    }

    public func graph(_ name: String) throws -> any Subgraph {
        guard let a = attributes[name] else {
            throw AnvilError.invalidNode(node: nodeName, op: opType, reason: "required graph attribute '\(name)' is missing")
        }
        guard case .graph(let g) = a else { throw wrongKind(name, "a graph", a) }
        return g
    }
}


/// The reference evaluation of one op: identity, supported opset range, function.
public struct KernelDefinition: Sendable {
    public let opType: String
    public let domain: String
    /// Earliest opset version this definition implements.
    public let sinceVersion: Int
    public let evaluate: @Sendable (EvalContext) throws -> [Tensor]
}

/// Reference evaluation of every supported op, keyed by domain and op type. The
/// runtime falls back to it for layers without a faster kernel; the builder's
/// op registry (AnvilOps) adds shape inference on top.
public enum KernelRegistry {
    public static let all: [String: KernelDefinition] = {
        var b = KernelTableBuilder()
        registerElementwise(&b)
        registerNeural(&b)
        registerReductions(&b)
        registerShapeOps(&b)
        registerControlFlow(&b)
        registerQuantization(&b)
        registerMicrosoftQuantized(&b)
        registerResize(&b)
        registerAttention(&b)
        registerRecurrent(&b)
        registerDetection(&b)
        registerLosses(&b)
        registerSignal(&b)
        registerAnvilOps(&b)
        return b.table
    }()

    /// The registry key of an op ("ai.onnx" and "" are the same domain).
    public static func key(_ domain: String, _ op: String) -> String {
        let d = domain == "ai.onnx" ? "" : domain
        return "\(d)::\(op)"
    }

    /// The definition for an op at an opset version, nil when unsupported.
    public static func lookup(domain: String, opType: String, opset: Int) -> KernelDefinition? {
        guard let def = all[key(domain, opType)], opset >= def.sinceVersion else { return nil }
        return def
    }
}

/// Collects definitions while the table is built.
struct KernelTableBuilder {
    var table: [String: KernelDefinition] = [:]

    mutating func add(_ op: String, domain: String = "", since: Int = 1, _ eval: @escaping @Sendable (EvalContext) throws -> [Tensor]) {
        table[KernelRegistry.key(domain, op)] = KernelDefinition(opType: op, domain: domain, sinceVersion: since, evaluate: eval)
    }

    /// Registers an op with one output.
    mutating func add1(_ op: String, domain: String = "", since: Int = 1, _ eval: @escaping @Sendable (EvalContext) throws -> Tensor) {
        add(op, domain: domain, since: since) { [try eval($0)] }
    }
}
