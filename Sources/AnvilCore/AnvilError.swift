/// Errors a user can cause, each naming what is wrong and where.
public enum AnvilError: Error, CustomStringConvertible, Equatable {
    /// A file could not be read or written.
    case io(path: String, reason: String)
    /// A model file is not valid ONNX or breaks a limit.
    case invalidModel(file: String, field: String, reason: String)
    /// A node's inputs, outputs or attributes are wrong for its op.
    case invalidNode(node: String, op: String, reason: String)
    /// A graph is malformed (verifier finding).
    case invalidGraph(graph: String, reason: String)
    /// An op (domain, type, opset) Anvil does not implement.
    case unsupportedOp(node: String, op: String, domain: String, version: Int)
    /// A tensor file or value does not fit what is expected of it.
    case invalidTensor(name: String, reason: String)
    /// A command-line argument is wrong.
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .io(let path, let reason): "\(path): \(reason)"
        case .invalidModel(let file, let field, let reason): "\(file): \(field): \(reason)"
        case .invalidNode(let node, let op, let reason): "node '\(node)' (\(op)): \(reason)"
        case .invalidGraph(let graph, let reason): "graph '\(graph)': \(reason)"
        case .unsupportedOp(let node, let op, let domain, let version):
            "node '\(node)': op \(domain.isEmpty ? "" : domain + ".")\(op) (opset \(version)) is not supported"
        case .invalidTensor(let name, let reason): "tensor '\(name)': \(reason)"
        case .invalidArgument(let message): message
        }
    }
}
