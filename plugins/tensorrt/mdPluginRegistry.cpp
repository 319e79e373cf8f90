// mdPluginRegistry.cpp -- the one list of plugin creators in libmamba_deploy_trt_plugins.so and
// the entry points TensorRT looks up when it loads a plugin library: IPluginRegistry::loadLibrary,
// trtexec --dynamicPlugins, Polygraphy --plugins and engines built with setPluginsToSerialize all
// call getCreators() and setLoggerFinder(). (getPluginCreators(), the older name, returns
// IPluginCreator (V2) objects by contract; these are IPluginCreatorV3One, so it is not exported.)
#include "mdOps.h"

#define MD_TRT_EXPORT extern "C" __attribute__((visibility("default")))

namespace mamba_deploy {
namespace trt {
namespace {

template <class Op>
nvinfer1::IPluginCreatorInterface* creator()
{
    static MambaPluginCreator<Op> instance;
    return &instance;
}

} // namespace
} // namespace trt
} // namespace mamba_deploy

MD_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mamba_deploy::trt::setLoggerFinder(finder);
}

MD_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    namespace t = mamba_deploy::trt;
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {
        t::creator<t::CausalConv1dPrefillOp>(),
        t::creator<t::CausalConv1dUpdateOp>(),
        t::creator<t::SelectiveScanOp>(),
        t::creator<t::StateUpdateOp>(),
        t::creator<t::ChunkScanOp>(),
    };
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}
