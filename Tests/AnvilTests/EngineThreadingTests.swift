import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilONNX
import AnvilRuntime
import Dispatch
import Foundation
import XCTest

/// One engine shared by four threads, each with its own execution context.
final class EngineThreadingTests: XCTestCase {
    func testFourThreadsMatchOneThreadOverAThousandRuns() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))
        let file = try EngineBuilder().build(model, name: "cnn").file
        let engine = try Engine(file: try file.encoded().withUnsafeBytes { try EngineFile.decode($0, file: "cnn.anvil") }, name: "cnn.anvil")
        let inputs = try (0..<4).map { k in try PassTesting.randomInputs(model.graph, seed: UInt64(100 + k)) }
        let expected = try inputs.map { try ExecutionContext(engine: engine).run($0)[0].value }
        let mismatches = Mismatches()
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            let context = ExecutionContext(engine: engine)
            for run in 0..<250 {
                let k = (thread + run) % 4
                let value = try? context.run(inputs[k])[0].value
                if value != expected[k] { mismatches.add() }
            }
        }
        XCTAssertEqual(mismatches.count, 0)
    }
}

/// A thread-safe counter for the test.
final class Mismatches: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func add() { lock.lock(); value += 1; lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return value }
}
