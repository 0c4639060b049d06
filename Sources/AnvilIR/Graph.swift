import AnvilCore

/// One operator application. Inputs and outputs name values; an empty name is an
/// omitted optional input or output.
public final class Node {
    /// Node name, unique within the graph after import.
    public var name: String
    /// ONNX op type ("Conv").
    public var opType: String
    /// Op domain ("" for the default ONNX domain).
    public var domain: String
    /// Names of the input values, "" for an omitted optional input.
    public var inputs: [String]
    /// Names of the output values, "" for an omitted optional output.
    public var outputs: [String]
    /// Attributes by name.
    public var attributes: [String: Attribute]
    /// Names of the original nodes this node stands for (itself when not fused).
    public var fusedFrom: [String]

    public init(name: String, opType: String, domain: String = "", inputs: [String], outputs: [String],
                attributes: [String: Attribute] = [:], fusedFrom: [String]? = nil) {
        self.name = name
        self.opType = opType
        self.domain = domain
        self.inputs = inputs
        self.outputs = outputs
        self.attributes = attributes
        self.fusedFrom = fusedFrom ?? [name]
    }

    /// "domain.Op" or "Op" for the default domain.
    public var qualifiedOpType: String {
        domain.isEmpty || domain == "ai.onnx" ? opType : "\(domain).\(opType)"
    }

    /// Subgraphs held in attributes (If branches, Loop and Scan bodies).
    public var subgraphs: [Graph] {
        attributes.keys.sorted().flatMap { key -> [Graph] in
            switch attributes[key]! {
            case .graph(let g): [g as? Graph].compactMap { $0 }
            case .graphs(let gs): gs.compactMap { $0 as? Graph }
            default: []
            }
        }
    }
}

/// A named, typed graph input or output.
public struct ValueInfo: Equatable {
    public var name: String
    public var type: TensorType
    public init(name: String, type: TensorType) {
        self.name = name
        self.type = type
    }
}

/// A computation graph in SSA form: every value is defined once, by a graph input,
/// an initializer, or a node output; nodes are kept in topological order.
public final class Graph: Subgraph {
    public var name: String
    public var inputs: [ValueInfo]
    public var outputs: [ValueInfo]
    /// Constant tensors by name.
    public var initializers: [String: Tensor]
    /// Initializer names in file order (dictionary order is not stable).
    public var initializerOrder: [String]
    public var nodes: [Node]
    /// Known types of intermediate values (value_info and inference results).
    public var valueTypes: [String: TensorType]

    public init(name: String, inputs: [ValueInfo] = [], outputs: [ValueInfo] = [], nodes: [Node] = [],
                initializers: [(String, Tensor)] = [], valueTypes: [String: TensorType] = [:]) {
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.nodes = nodes
        self.initializers = Dictionary(initializers, uniquingKeysWith: { _, b in b })
        self.initializerOrder = initializers.map(\.0)
        self.valueTypes = valueTypes
    }

    /// Adds or replaces an initializer.
    public func setInitializer(_ name: String, _ tensor: Tensor) {
        if initializers[name] == nil { initializerOrder.append(name) }
        initializers[name] = tensor
    }

    /// Number of inputs a caller binds when running this graph as a subgraph.
    public var inputCount: Int { inputs.count }
    /// Declared output types (for Loop's empty scan outputs).
    public var outputTypes: [TensorType] { outputs.map(\.type) }

    /// Graph inputs that are not initializers: the values a caller must feed.
    public var runtimeInputs: [ValueInfo] {
        inputs.filter { initializers[$0.name] == nil }
    }

    /// The best known type of a value in this graph (not searching outer scopes).
    public func type(of value: String) -> TensorType? {
        if let t = initializers[value] { return t.type }
        if let t = valueTypes[value] { return t }
        if let i = inputs.first(where: { $0.name == value }) { return i.type }
        if let o = outputs.first(where: { $0.name == value }) { return o.type }
        return nil
    }

    /// Visits this graph's nodes and every subgraph's nodes, depth first.
    public func forEachNodeRecursively(_ body: (Node, Graph) throws -> Void) rethrows {
        for node in nodes {
            try body(node, self)
            for sub in node.subgraphs { try sub.forEachNodeRecursively(body) }
        }
    }
}

/// An operator set import: domain ("" is ONNX) and version.
public struct OpsetImport: Hashable {
    public var domain: String
    public var version: Int
    public init(domain: String, version: Int) {
        self.domain = domain
        self.version = version
    }
}

/// A whole model: metadata, operator sets and the main graph.
public final class Model {
    public var irVersion: Int
    public var producerName: String
    public var producerVersion: String
    public var domain: String
    public var modelVersion: Int
    public var docString: String
    public var opsets: [OpsetImport]
    public var metadata: [(String, String)]
    public var graph: Graph
    /// What shape inference found questionable but not fatal (a declared shape the
    /// computation contradicts), for the command line to print.
    public var warnings: [String] = []

    public init(graph: Graph, opsets: [OpsetImport], irVersion: Int = 8, producerName: String = "",
                producerVersion: String = "", domain: String = "", modelVersion: Int = 0, docString: String = "",
                metadata: [(String, String)] = []) {
        self.graph = graph
        self.opsets = opsets
        self.irVersion = irVersion
        self.producerName = producerName
        self.producerVersion = producerVersion
        self.domain = domain
        self.modelVersion = modelVersion
        self.docString = docString
        self.metadata = metadata
    }

    /// Opset version imported for a domain ("" and "ai.onnx" are the same), nil when not imported.
    public func opsetVersion(domain: String) -> Int? {
        let d = domain == "ai.onnx" ? "" : domain
        return opsets.first { ($0.domain == "ai.onnx" ? "" : $0.domain) == d }?.version
    }
}
