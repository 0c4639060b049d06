import Foundation

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
    /// Memory a model or its inputs ask for exceeds the limit (`MemoryPolicy`); `bytes`
    /// is nil when the size does not even fit a 64-bit count.
    case memoryLimit(what: String, bytes: Int?, limit: Int)

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
        case .memoryLimit(let what, let bytes, let limit):
            "\(what) needs \(bytes.map(byteCount) ?? "more than 2^63 bytes"), above the memory limit of \(byteCount(limit)) (set it with --memoryLimit or \(MemoryPolicy.environmentVariable))"
        }
    }
}

/// A byte count for messages: "34359738400 bytes (32.0 GiB)".
func byteCount(_ n: Int) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var value = Double(n), unit = -1
    while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit < 0 ? "\(n) bytes" : "\(n) bytes (\(String(format: "%.1f", value)) \(units[unit]))"
}
