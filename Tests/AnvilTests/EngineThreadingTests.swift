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

/// Bad inputs to an engine: clear errors for wrong names, types and shapes; NaN and
/// Inf propagate through the planned kernels without crashing.
final class EngineInputTests: XCTestCase {
    func testBadAndNonFiniteInputs() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))
        let engine = try Engine(file: try EngineBuilder().build(model, name: "cnn").file, name: "cnn.anvil")
        let context = ExecutionContext(engine: engine)
        let good = try PassTesting.randomInputs(model.graph, seed: 5)
        _ = try context.run(good)
        XCTAssertNotNil(context.lastPlan)
        for (inputs, message) in [(["image": try Tensor(floats: [Float](repeating: 0, count: 3 * 32 * 31), shape: [1, 3, 32, 31])], "dimension 3 must be 32"),
                                  (["image": try Tensor(int64s: [Int64](repeating: 0, count: 3 * 32 * 32), shape: [1, 3, 32, 32])], "element type"),
                                  ([:], "missing"),
                                  (good.merging(["extra": Tensor.scalar(Float(1))]) { a, _ in a }, "no input of this name")] {
            XCTAssertThrowsError(try context.run(inputs)) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error)")
            }
        }
        var values = good["image"]!.floats
        values[0] = .nan
        values[100] = .infinity
        values[200] = -.infinity
        let output = try context.run(["image": try Tensor(floats: values, shape: [1, 3, 32, 32])])[0].value
        XCTAssertTrue(output.floats.contains { $0.isNaN }, "NaN should propagate: \(output.floats)")
        // The context still works afterwards.
        XCTAssertEqual(try context.run(good)[0].value, try ExecutionContext(engine: engine).run(good)[0].value)
    }
}
