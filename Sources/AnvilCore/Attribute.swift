/// A body graph held by an attribute (If branches, Loop and Scan bodies). The
/// builder's IR graph and the engine's layer graph both conform; evaluation only
/// needs to know how to call it.
public protocol Subgraph: AnyObject {
    var name: String { get }
    /// Number of inputs a caller binds.
    var inputCount: Int { get }
    /// Declared types of the outputs.
    var outputTypes: [TensorType] { get }
}

/// An attribute value of a node, one case per ONNX attribute kind Anvil supports.
public enum Attribute: CustomStringConvertible {
    case float(Float)
    case int(Int64)
    case string(String)
    case tensor(Tensor)
    case graph(any Subgraph)
    case floats([Float])
    case ints([Int64])
    case strings([String])
    case tensors([Tensor])
    case graphs([any Subgraph])

    /// The ONNX kind name, as used in error messages.
    public var kindName: String {
        switch self {
        case .float: "float"
        case .int: "int"
        case .string: "string"
        case .tensor: "tensor"
        case .graph: "graph"
        case .floats: "floats"
        case .ints: "ints"
        case .strings: "strings"
        case .tensors: "tensors"
        case .graphs: "graphs"
        }
    }

    public var description: String {
        switch self {
        case .float(let v): String(v)
        case .int(let v): String(v)
        case .string(let v): "\"\(v)\""
        case .tensor(let t): t.count <= 8 ? t.description : "\(t.dataType)\(t.shape)"
        case .graph(let g): "graph(\(g.name))"
        case .floats(let v): "[\(v.map { String($0) }.joined(separator: ","))]"
        case .ints(let v): "[\(v.map { String($0) }.joined(separator: ","))]"
        case .strings(let v): "[\(v.map { "\"\($0)\"" }.joined(separator: ","))]"
        case .tensors(let v): "[\(v.count) tensors]"
        case .graphs(let v): "[\(v.map { "graph(\($0.name))" }.joined(separator: ","))]"
        }
    }
}

