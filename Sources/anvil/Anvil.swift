import AnvilCore
import ArgumentParser
import Foundation

@main
struct Anvil: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anvil",
        abstract: "Anvil: an ONNX optimizing compiler and runtime for CPUs.",
        subcommands: [Inspect.self, Run.self, Validate.self, Optimize.self, Build.self, Bench.self, Exec.self]
    )

    /// Runs a command body, turning Anvil errors into a clear message and exit status 1.
    static func guarded(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let error as AnvilError {
            FileHandle.standardError.write(Data("error: \(error.description)\n".utf8))
            throw ExitCode(1)
        }
    }
}
