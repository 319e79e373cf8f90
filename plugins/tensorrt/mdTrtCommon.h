// mdTrtCommon.h -- what every Mamba TensorRT plugin shares and that is not the plugin class itself:
// logging through the logger TensorRT hands to the library, the exception guard every noexcept
// plugin method runs its body in, plugin-field reading (with validation) and writing, dtype and
// stride helpers. Nothing here knows about a particular op.
#pragma once

#include <cstdint>
#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

#include "mamba_kernels.h"

// IPluginV3OneBuildV2 (I/O aliasing) appeared in TensorRT 10.3.
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 3)
#define MD_TRT_HAS_BUILD_V2 1
#else
#define MD_TRT_HAS_BUILD_V2 0
#endif

namespace mamba_deploy {
namespace trt {

constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "mamba_deploy";

// ---- logging -----------------------------------------------------------------------------------
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
// Logs through TensorRT's logger when the library was loaded by TensorRT, else to stderr.
void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;
void logError(char const* plugin, char const* method, char const* what) noexcept;

// Runs `body` (which may throw) for plugin method `method`; on an exception logs it and returns
// `onError`. Every noexcept plugin method is `return guard(...)`.
template <typename R, typename F>
R guard(char const* plugin, char const* method, R onError, F&& body) noexcept
{
    try
    {
        return body();
    }
    catch (std::exception const& e)
    {
        logError(plugin, method, e.what());
    }
    catch (...)
    {
        logError(plugin, method, "unknown exception");
    }
    return onError;
}

// Throws std::invalid_argument(message) unless `condition`.
void require(bool condition, std::string const& message);

// ---- plugin fields -----------------------------------------------------------------------------
// A declared field: what getFieldNames() advertises (the ONNX parser only forwards node
// attributes whose names are advertised).
struct FieldSpec
{
    char const* name;
    nvinfer1::PluginFieldType type;
    int32_t length; // elements; 0 = variable
};

// Read-only typed view of a PluginFieldCollection. Integer and float fields accept every width
// TensorRT or the ONNX parser may produce; a field of the wrong kind is an error, not a default.
class FieldReader
{
public:
    explicit FieldReader(nvinfer1::PluginFieldCollection const* fc);
    bool has(char const* name) const;
    int64_t getInt(char const* name, int64_t fallback) const;
    double getFloat(char const* name, double fallback) const;
    std::vector<double> getFloats(char const* name, std::vector<double> const& fallback) const;
    std::string getString(char const* name, std::string const& fallback) const;
    // Names present in the collection but not in `known` (reported as warnings by the creators).
    std::vector<std::string> unknown(std::vector<FieldSpec> const& known) const;

private:
    nvinfer1::PluginField const* find(char const* name) const;
    std::vector<nvinfer1::PluginField> mFields;
};

// Owns the bytes behind the PluginFieldCollection a plugin returns from getFieldsToSerialize().
class FieldWriter
{
public:
    void clear();
    void addInt(char const* name, int32_t value);
    void addFloats(char const* name, std::vector<float> const& values);
    void addString(char const* name, std::string const& value);
    nvinfer1::PluginFieldCollection const* collection();

private:
    void add(char const* name, std::string bytes, nvinfer1::PluginFieldType type, int32_t length);
    std::deque<std::string> mStore; // deque: push_back keeps earlier elements in place
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// ---- tensors -----------------------------------------------------------------------------------
bool isFloatType(nvinfer1::DataType t) noexcept;
md_dtype toMdDtype(nvinfer1::DataType t); // throws for non-float types
char const* typeName(nvinfer1::DataType t) noexcept;
std::string dimsToString(nvinfer1::Dims const& d);

// One input or output of an op at shape-check or enqueue time. dims may hold -1 (unknown) at
// configurePlugin time; an absent optional input has present == false.
struct TensorArg
{
    bool present{false};
    nvinfer1::Dims dims{};
    nvinfer1::DataType type{nvinfer1::DataType::kFLOAT};
    void const* data{nullptr};

    int64_t dim(int32_t axis) const { return axis < dims.nbDims ? dims.d[axis] : -1; }
    // Element stride of `axis` for the dense row-major (TensorFormat::kLINEAR) layout.
    int64_t stride(int32_t axis) const;
};

// Shape assertions that treat -1 (unknown before the profile is fixed) as "matches anything".
void expectRank(TensorArg const& t, char const* name, int32_t rank);
void expectDim(TensorArg const& t, char const* name, int32_t axis, int64_t value, char const* what);
void expectSameDim(TensorArg const& a, char const* aName, int32_t aAxis, TensorArg const& b, char const* bName,
    int32_t bAxis);

// The message behind a failed launcher call.
std::string launchError(cudaError_t err);

} // namespace trt
} // namespace mamba_deploy
