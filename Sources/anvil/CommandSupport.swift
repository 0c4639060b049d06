import AnvilBuilder
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
    // More threads than cores only contend; thousands make OpenMP fail to start them (a crash in libgomp).
    let cores = ProcessInfo.processInfo.activeProcessorCount, cap = max(4 * cores, 64)
    guard threads <= cap else {
        throw AnvilError.invalidArgument("--threads \(threads) is more than \(cap) (this machine has \(cores) cores; at most max(4 × cores, 64) threads)")
    }
    guard DNNLThreads.set(threads) else { throw AnvilError.invalidArgument("--threads: this oneDNN build's thread count cannot be set") }
}

/// Creates an output folder (and its parents), or says why it cannot: a file in the
/// way, no permission, a read-only file system.
func makeFolder(_ path: String, flag: String) throws {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
        guard isDirectory.boolValue else { throw AnvilError.io(path: path, reason: "\(flag): exists and is not a folder") }
        guard access(path, W_OK) == 0 else { throw AnvilError.io(path: path, reason: "\(flag): the folder is not writable (\(String(cString: strerror(errno))))") }
        return
    }
    do {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    } catch {
        let underlying = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError
        let reason = underlying.map { String(cString: strerror(Int32($0.code))) } ?? error.localizedDescription
        throw AnvilError.io(path: path, reason: "\(flag): cannot create the folder (\(reason))")
    }
}

/// Refuses an engine where an ONNX model is expected, naming what it is.
func requireONNXModel(_ path: String, command: String) throws {
    // Only a regular file is peeked at: reading a pipe's first bytes would take them from the importer.
    var info = stat()
    guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return }
    if isEngineFile(path) {
        throw AnvilError.io(path: path, reason: "this is an Anvil engine, not an ONNX model: anvil \(command) takes ONNX models (run, bench and inspect take engines)")
    }
}

/// The engine in `path`: an engine file loaded, or an ONNX model built in memory (the engine
/// just built, with the kernels its compilation made), its build warnings printed.
func engineOrBuilt(_ path: String) throws -> Engine {
    if isEngineFile(path) { return try Engine(path: path) }
    let built = try EngineBuilder().build(try ONNXImporter.load(path: path), name: path)
    Anvil.warn(built.warnings)
    return built.engine
}

/// True when the file starts with the engine magic.
func isEngineFile(_ path: String) -> Bool {
    guard let handle = FileHandle(forReadingAtPath: path) else { return false }
    defer { try? handle.close() }
    return (try? handle.read(upToCount: 8)).map { [UInt8]($0) == EngineFile.magic } ?? false
}

/// Something that runs a model: an engine (read from a file, or built in memory from
/// an ONNX model as `anvil build` would, without timing tactics) or the reference
/// executor on an ONNX model.
struct Runner {
    let inputNames: [String]
    let outputNames: [String]
    /// The engine it runs (nil on the reference executor).
    var engine: Engine? = nil
    /// What runs the model, for the first line of `run` and `validate`.
    let description: String
    let run: ([String: Tensor]) throws -> [(name: String, value: Tensor)]

    /// `reference`: run an ONNX model on the reference executor instead of an engine.
    static func load(_ path: String, reference: Bool = false) throws -> Runner {
        if isEngineFile(path) {
            guard !reference else { throw AnvilError.invalidArgument("\(path) is an engine; the reference executor runs ONNX models") }
            return engine(try Engine(path: path), "engine \(path)")
        }
        let executor = try loadRunnable(path)
        if !reference {
            // What the builder refuses is reported as such; --reference-executor runs the model as it is.
            var builder = EngineBuilder()
            builder.timeTactics = false
            let built = try builder.build(executor.model, name: path)
            Anvil.warn(built.warnings)
            let slow = built.compiled.decisions.values.filter(\.isSlowPath).count
            return engine(built.engine, "engine built in memory from \(path) (\(built.graph.layers.count) layers, \(slow) on slow paths)")
        }
        return Runner(inputNames: executor.model.graph.runtimeInputs.map(\.name), outputNames: executor.model.graph.outputs.map(\.name),
                      description: "reference executor on \(path)") { try executor.run($0) }
    }

    static func engine(_ engine: Engine, _ description: String) -> Runner {
        let context = ExecutionContext(engine: engine)
        return Runner(inputNames: engine.inputs.map(\.name), outputNames: engine.outputs.map(\.name), engine: engine, description: description) {
            try context.run($0)
        }
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
