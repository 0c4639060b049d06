import AnvilBuilder
import AnvilCore
import AnvilIR
import AnvilRuntime
import Foundation
import XCTest

/// Paths and helpers shared by the tests.
enum TestSupport {
    /// The repository root.
    static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    static func fixture(_ relative: String) -> String { "\(root)/fixtures/\(relative)" }

    /// The `anvil` binary of the current build configuration.
    static var anvil: String {
        #if DEBUG
        return "\(root)/.build/debug/anvil"
        #else
        return "\(root)/.build/release/anvil"
        #endif
    }

    /// Runs the CLI and returns its exit status and output.
    static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: anvil)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// A fresh empty temporary folder.
    static func temporaryFolder() throws -> String {
        let path = NSTemporaryDirectory() + "anvil-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// `model` built as written (no optimizer passes, so the layer under test stays itself).
    static func unoptimized(_ model: Model, name: String = "test") throws -> EngineBuilder.Result {
        var builder = EngineBuilder()
        builder.optimize = false
        return try builder.build(model, name: name)
    }

    /// A context on the `unoptimized` engine, read back from its file's bytes as from disk.
    static func unoptimizedContext(_ model: Model, name: String = "test") throws -> ExecutionContext {
        ExecutionContext(engine: try Engine(file: try unoptimized(model, name: name).file, name: name))
    }
}
