import AnvilCore
import AnvilEngine
import ArgumentParser
import Foundation

@main
struct Anvil: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anvil",
        abstract: "Anvil: an ONNX optimizing compiler and runtime for CPUs.",
        version: "anvil \(EngineFile.producerVersion)",
        subcommands: [Inspect.self, Run.self, Validate.self, Optimize.self, Build.self, Bench.self, Exec.self, Soak.self]
    )

    /// oneDNN's OpenMP threads must spin between layers, or every layer pays the
    /// wake-up of sleeping threads (MobileNetV2 runs 1.6x slower), but not for ever:
    /// under a CPU hog a thread spinning at a barrier for a descheduled one burns its
    /// time slice, and ResNet-50 once took 784 ms instead of 33 (tools/bench-contention
    /// --under-hog). libgomp reads its variables once, when it is loaded, so when
    /// OMP_WAIT_POLICY is unset the tool sets it to ACTIVE with a bounded GOMP_SPINCOUNT
    /// (30000 pauses, well under a millisecond, then sleep) and re-executes itself; set
    /// either variable to choose otherwise.
    static let spinCount = "30000"

    static func main() {
        let environment = ProcessInfo.processInfo.environment
        if environment["OMP_WAIT_POLICY"] == nil, FileManager.default.fileExists(atPath: "/proc/self/exe") {
            setenv("OMP_WAIT_POLICY", "ACTIVE", 1)
            if environment["GOMP_SPINCOUNT"] == nil { setenv("GOMP_SPINCOUNT", spinCount, 1) }
            execv("/proc/self/exe", CommandLine.unsafeArgv)
            // execv returns only on failure: carry on with the default policy.
        }
        Self.main(nil)
    }

    /// Prints warnings (questionable but not fatal findings about a model) on standard error.
    static func warn(_ warnings: [String]) {
        for w in warnings { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
    }

    /// Runs a command body, turning Anvil errors into a clear message and exit status 1;
    /// the memory limit is set first.
    static func guarded(_ limits: LimitOptions? = nil, _ body: () throws -> Void) throws {
        do {
            try limits?.apply()
            try body()
        } catch let error as AnvilError {
            FileHandle.standardError.write(Data("error: \(error.description)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// --memoryLimit, shared by every command that reads a model, an engine or tensors.
struct LimitOptions: ParsableArguments {
    @Option(name: .customLong("memoryLimit"), help: ArgumentHelp("Largest memory one tensor, folded constant or activation arena may take: bytes or 512M, 8G (default: 3/4 of physical memory, or ANVIL_MEMORY_LIMIT).",
                               valueName: "size"))
    var memoryLimit: String?

    func apply() throws {
        if let memoryLimit { MemoryPolicy.limit = try MemoryPolicy.parse(memoryLimit) }
    }
}
