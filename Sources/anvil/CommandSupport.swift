import AnvilCore
import AnvilEngine
import AnvilKernels
import AnvilONNX
import AnvilRuntime
import Foundation

// Helpers shared by several commands: shapes, tactic sources and threads (build,
// exec, bench), recognizing engine files and running either kind of model (run,
// validate, bench), and the progress bar.

/// Parses trtexec-style shape options into a profile.
func profileFrom(shapes: [String], min: [String], opt: [String], max: [String]) throws -> ShapeProfile {
    try ShapeProfile.from(shapes: ShapeProfile.parse(shapes, flag: "--shapes"), min: ShapeProfile.parse(min, flag: "--minShapes"),
                          opt: ShapeProfile.parse(opt, flag: "--optShapes"), max: ShapeProfile.parse(max, flag: "--maxShapes"))
}

/// Parses trtexec's --tacticSources ("-WINOGRAD", "+WINOGRAD,…"): whether Winograd
/// convolutions are allowed. trtexec's GPU sources are refused by name.
func winogradAllowed(tacticSources: String?) throws -> Bool {
    guard let tacticSources else { return true }
    var allowed = true
    for item in tacticSources.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
        guard let sign = item.first, sign == "+" || sign == "-" else {
            throw AnvilError.invalidArgument("--tacticSources: '\(item)' must start with + or - (e.g. -WINOGRAD)")
        }
        let name = item.dropFirst().uppercased()
        switch name {
        case "WINOGRAD": allowed = sign == "+"
        case "CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS":
            throw AnvilError.invalidArgument("--tacticSources: \(name) is a GPU tactic source; Anvil's is WINOGRAD")
        default: throw AnvilError.invalidArgument("--tacticSources: unknown source '\(name)'; Anvil's is WINOGRAD")
        }
    }
    return allowed
}

/// Applies --threads.
func setThreads(_ threads: Int?) throws {
    guard let threads else { return }
    guard threads >= 1 else { throw AnvilError.invalidArgument("--threads must be at least 1, got \(threads)") }
    guard DNNLThreads.set(threads) else { throw AnvilError.invalidArgument("--threads: this oneDNN build's thread count cannot be set") }
}

/// True when the file starts with the engine magic.
func isEngineFile(_ path: String) -> Bool {
    guard let handle = FileHandle(forReadingAtPath: path) else { return false }
    defer { try? handle.close() }
    return (try? handle.read(upToCount: 8)).map { [UInt8]($0) == EngineFile.magic } ?? false
}

/// Something that runs a model: the reference executor on ONNX or an engine.
struct Runner {
    let inputNames: [String]
    let run: ([String: Tensor]) throws -> [(name: String, value: Tensor)]

    static func load(_ path: String) throws -> Runner {
        if isEngineFile(path) {
            let engine = try Engine(path: path)
            let context = ExecutionContext(engine: engine)
            return Runner(inputNames: engine.inputs.map(\.name)) { try context.run($0) }
        }
        let executor = try loadRunnable(path)
        return Runner(inputNames: executor.model.graph.runtimeInputs.map(\.name)) { try executor.run($0) }
    }
}

/// A progress bar on standard error, drawn only when it is a terminal.
final class ProgressBar {
    let label: String
    let enabled = isatty(2) != 0
    private var drawn = false

    init(label: String) { self.label = label }

    func update(_ done: Int, _ total: Int) {
        guard enabled, total > 0 else { return }
        let width = 30, filled = width * done / total
        let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
        FileHandle.standardError.write(Data("\r\(label) [\(bar)] \(done)/\(total)".utf8))
        drawn = true
    }

    func finish() {
        if drawn { FileHandle.standardError.write(Data("\n".utf8)) }
        drawn = false
    }
}
