import AnvilCore
import Foundation
import XCTest

/// The nine small real-architecture models of onnx's backend/test/data/light,
/// compared with ONNX Runtime's outputs (prepared by tools/make-conformance-data).
final class LightModelTests: XCTestCase {
    static let models = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                         "shufflenet", "squeezenet", "vgg19", "zfnet512"]

    func testLightModelsMatchONNXRuntime() throws {
        let dir = "\(ConformanceRunner.root)/conformance-data/light"
        guard FileManager.default.fileExists(atPath: dir) else {
            XCTFail("\(dir) is missing: run tools/make-conformance-data (tools/test does)")
            return
        }
        let runner = ConformanceRunner()
        for name in Self.models {
            let start = Date()
            let status = runner.run(folder: "\(dir)/\(name)", rtol: 1e-3, atol: 1e-4)
            print("light/\(name): \(status.label) in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
            XCTAssertEqual(status, .passed, "light/\(name)")
        }
    }
}
